"""Split one labelled pool of clips into non-IID clients.

Label and quantity skew come from flwr-datasets partitioners, run over a `datasets.Dataset`
of (index, label) rows so nothing is rendered to partition. IID partitions are contiguous
near-equal shards, what flwr-datasets' IidPartitioner computes, taken directly: a process
partitioning IID never imports `datasets` (seconds of start-up per client process). Feature
shift (per-client domains) and missing modalities are per-client properties drawn from the
run seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedmirasol.errors import ConfigError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


class PartitionKeys(Protocol):
    """How a pool is split among clients: the partitioning keys of the run config's ``[data]``
    section, or a `fedmirasol data partition` command line (this layer does not import the
    config package)."""

    num_clients: int
    partitioner: str
    alpha: float
    min_partition_size: int
    classes_per_client: int
    quantity_alpha: float


class DataSettings(PartitionKeys, Protocol):
    """What client data reads of the run config's ``[data]`` section (its DataConfig)."""

    source: str
    val_fraction: float
    drop_audio_prob: float
    drop_video_prob: float
    domains: int
    manifest: str


@dataclass(frozen=True)
class ClientSpec:
    """Everything that defines one client's local data."""

    partition_id: int
    train_indices: tuple[int, ...]
    val_indices: tuple[int, ...]
    domain: int | None  # index of the client's domain (feature shift), None for neutral
    drop_audio: bool
    drop_video: bool


def quantity_sizes(total: int, num_partitions: int, alpha: float, min_size: int,
                   seed: int) -> list[int]:
    """Client sizes drawn from Dirichlet(alpha) over clients, each at least `min_size`."""
    if total < num_partitions * min_size:
        raise ConfigError(f"data.num-clients = {num_partitions} with data.min-partition-size = "
                          f"{min_size} needs at least {num_partitions * min_size} clips; the "
                          f"pool has {total}")
    rng = np.random.default_rng([seed, 0x51E])
    shares = rng.dirichlet(np.full(num_partitions, alpha))
    spare = total - num_partitions * min_size
    sizes = np.floor(shares * spare).astype(int) + min_size
    sizes[np.argsort(-shares)[: total - sizes.sum()]] += 1  # hand out the rounding remainder
    return [int(s) for s in sizes]


def build_partitioner(data: PartitionKeys, num_labels: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner the partitioning keys describe."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        SizePartitioner,
    )

    n = data.num_clients
    scheme = data.partitioner
    if scheme == "iid":
        return IidPartitioner(num_partitions=n)
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=n, partition_by="label", alpha=data.alpha,
            min_partition_size=data.min_partition_size, self_balancing=True, seed=seed,
        )
    if scheme == "pathological":
        return PathologicalPartitioner(
            num_partitions=n, partition_by="label",
            num_classes_per_partition=data.classes_per_client,
            class_assignment_mode="first-deterministic", seed=seed,
        )
    if scheme == "quantity":
        sizes = quantity_sizes(num_labels, n, data.quantity_alpha,
                               data.min_partition_size, seed)
        return SizePartitioner(partition_sizes=sizes)
    raise ConfigError(f"unknown data.partitioner {scheme!r}")


def partition_indices(labels: np.ndarray, data: PartitionKeys, seed: int) -> list[np.ndarray]:
    """Pool indices per client, in partition-id order, over the pool as ordered."""
    if data.partitioner == "iid":  # IidPartitioner's contiguous shards, without a table
        return list(np.array_split(np.arange(len(labels), dtype=np.int64), data.num_clients))
    from datasets import Dataset

    table = Dataset.from_dict({"index": np.arange(len(labels)), "label": labels.astype(np.int64)})
    partitioner = build_partitioner(data, len(labels), seed)
    partitioner.dataset = table
    parts = [np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64)
             for pid in range(data.num_clients)]
    return parts


def split_pool(labels: np.ndarray, data: PartitionKeys, seed: int, *,
               shuffle_iid: bool = False) -> list[np.ndarray]:
    """Pool indices per client. Quantity skew hands out contiguous ranges, so the pool is
    shuffled first (seeded); so is an IID split when `shuffle_iid` (a manifest lists clips in
    its own order, often sorted by label or source)."""
    order = np.arange(len(labels))
    if data.partitioner == "quantity" or (shuffle_iid and data.partitioner == "iid"):
        order = np.random.default_rng([seed, 0x0DE]).permutation(len(labels))
    return [order[part] for part in partition_indices(labels[order], data, seed)]


def _pool_name(data: DataSettings) -> str:
    if data.source == "manifest":
        return f"manifest {data.manifest}"
    return "the synthetic pool (data.num-clients x data.clips-per-client)"


def _partitioner_keys(data: DataSettings) -> str:
    """The keys that shape the chosen partitioner, `key = value`, for error messages."""
    keys = {"dirichlet": ("alpha", "min-partition-size"), "quantity": ("quantity-alpha",
            "min-partition-size"), "pathological": ("classes-per-client",)}
    return ", ".join(f"data.{key} = {getattr(data, key.replace('-', '_'))!r}"
                     for key in ("partitioner", *keys.get(data.partitioner, ())))


def check_pool_size(num_clips: int, data: DataSettings) -> None:
    """Enough clips for every client to get its fewest (2: train + validation; Dirichlet and
    quantity skew: data.min-partition-size), or a ConfigError naming the keys and sizes."""
    n = data.num_clients
    per = 2
    if data.partitioner in ("dirichlet", "quantity"):
        per = max(2, data.min_partition_size)
    if num_clips >= n * per:
        return
    fewest = (f"data.min-partition-size = {data.min_partition_size} per client"
              if per == data.min_partition_size else
              "2 per client: one to train, one to validate")
    raise ConfigError(f"data.num-clients = {n} needs at least {n * per} clips ({fewest}); "
                      f"{_pool_name(data)} has {num_clips}: lower data.num-clients"
                      + (" or list more clips in the manifest" if data.source == "manifest"
                         else " or raise data.clips-per-client"))


def client_specs(labels: np.ndarray, data: DataSettings, seed: int) -> list[ClientSpec]:
    """Every client's local train/validation split, domain and missing modalities."""
    check_pool_size(len(labels), data)
    try:
        parts = split_pool(labels, data, seed)
    except ConfigError:
        raise
    except ValueError as error:  # flwr-datasets' message, which names no config key
        raise ConfigError(f"{_partitioner_keys(data)} cannot split the {len(labels)} clips of "
                          f"{_pool_name(data)} among data.num-clients = {data.num_clients} "
                          f"clients: {error}") from error
    specs = []
    for pid, indices in enumerate(parts):
        if len(indices) < 2:
            raise ConfigError(f"client {pid} got {len(indices)} clips from "
                              f"{_partitioner_keys(data)} over the {len(labels)} clips of "
                              f"{_pool_name(data)}; it needs at least 2 (train and validation): "
                              f"raise data.clips-per-client or data.min-partition-size, or "
                              f"lower data.num-clients")
        rng = np.random.default_rng([seed, pid, 0xC11E])
        indices = rng.permutation(indices)
        num_val = min(max(1, round(len(indices) * data.val_fraction)), len(indices) - 1)
        draw = rng.random()
        drop_audio = draw < data.drop_audio_prob
        drop_video = not drop_audio and draw < data.drop_audio_prob + data.drop_video_prob
        domains = data.domains
        specs.append(ClientSpec(
            partition_id=pid,
            train_indices=tuple(int(i) for i in indices[num_val:]),
            val_indices=tuple(int(i) for i in indices[:num_val]),
            domain=pid % domains if domains > 0 else None,
            drop_audio=bool(drop_audio),
            drop_video=bool(drop_video),
        ))
    return specs


def label_histogram(labels: np.ndarray, indices: np.ndarray | tuple[int, ...],
                    num_classes: int) -> list[int]:
    return np.bincount(labels[np.asarray(indices, dtype=np.int64)],
                       minlength=num_classes).tolist()
