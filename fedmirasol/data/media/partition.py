"""Split a manifest into one manifest per client: by site, Dirichlet over labels, or IID.

Dirichlet and IID use flwr-datasets' partitioners on a local `datasets.Dataset` built from the
manifest (row index and label), so the splits match what Flower's own tooling produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedmirasol.data.media.manifest import ClipRecord, write_manifest
from fedmirasol.errors import ConfigError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

METHODS = ("site", "dirichlet", "iid")


def partition_records(
    records: list[ClipRecord],
    num_clients: int | None,
    by: str,
    alpha: float = 0.5,
    seed: int = 42,
    min_partition_size: int = 1,
) -> list[list[ClipRecord]]:
    """The records of each client, in client order. Errors name the `fedmirasol data
    partition` flags (--clients, --min-size, --alpha) and the sizes involved."""
    if by not in METHODS:
        raise ConfigError(f"unknown partition method {by!r}; known: {', '.join(METHODS)}")
    if by == "site":
        return _by_site(records, num_clients)
    if not num_clients or num_clients < 1:
        raise ConfigError(f"--by {by} needs --clients >= 1, got {num_clients}")
    fewest = max(1, min_partition_size) if by == "dirichlet" else 1
    if num_clients * fewest > len(records):
        per = f" x --min-size {min_partition_size}" if by == "dirichlet" else ""
        raise ConfigError(f"--clients {num_clients}{per} needs at least {num_clients * fewest} "
                          f"clips; the manifest has {len(records)}")
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    table = Dataset.from_dict({"row": list(range(len(records))), "label": [r.label for r in records]})
    partitioner: Partitioner
    if by == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
        table = table.shuffle(seed=seed)
    else:
        if all(r.label < 0 for r in records):
            raise ConfigError("--by dirichlet splits by label, but the manifest has no labels")
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            seed=seed,
        )
    partitioner.dataset = table
    try:
        return [[records[i] for i in sorted(partitioner.load_partition(c)["row"])]
                for c in range(num_clients)]
    except ValueError as error:  # flwr-datasets' message names none of the flags
        flags = f" --alpha {alpha} --min-size {min_partition_size}" if by == "dirichlet" else ""
        raise ConfigError(f"--by {by} --clients {num_clients}{flags} cannot split the manifest's "
                          f"{len(records)} clips: {error}") from error


def write_partitions(
    partitions: list[list[ClipRecord]], out_dir: str | Path, suffix: str = ".csv"
) -> list[Path]:
    """``client_<i>.csv`` per client in `out_dir` (a site's own manifest)."""
    out_dir = Path(out_dir)
    return [
        write_manifest(records, out_dir / f"client_{i}{suffix}") for i, records in enumerate(partitions)
    ]


def _by_site(records: list[ClipRecord], num_clients: int | None) -> list[list[ClipRecord]]:
    sites = sorted({r.site for r in records if r.site is not None})
    if not sites:
        raise ConfigError("--by site needs a 'site' column in the manifest")
    unsited = [r.path for r in records if r.site is None]
    if unsited:
        raise ConfigError(f"{len(unsited)} clips have no site, e.g. {unsited[0]}")
    if num_clients is not None and num_clients != len(sites):
        raise ConfigError(
            f"--clients {num_clients} does not match the manifest's {len(sites)} sites: {', '.join(sites)}"
        )
    return [[r for r in records if r.site == site] for site in sites]
