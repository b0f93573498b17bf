"""Split a manifest into one manifest per client: by site, Dirichlet over labels, or IID.

Dirichlet and IID are the run's own partitioning (`fedmirasol.data.partitioning`, flwr-datasets'
partitioners), so a manifest split here is split the way `fedmirasol simulate` splits a pool;
IID shuffles the manifest's order first (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmirasol.data.media.manifest import ClipRecord, write_manifest
from fedmirasol.data.partitioning import split_pool
from fedmirasol.errors import ConfigError

METHODS = ("site", "dirichlet", "iid")


@dataclass(frozen=True)
class _Split:
    """The partitioning keys (`PartitionKeys`) of a `fedmirasol data partition` command line."""

    partitioner: str
    num_clients: int
    alpha: float
    min_partition_size: int
    classes_per_client: int = 1
    quantity_alpha: float = 1.0


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
    if by == "dirichlet" and all(r.label < 0 for r in records):
        raise ConfigError("--by dirichlet splits by label, but the manifest has no labels")
    labels = np.array([r.label for r in records], dtype=np.int64)
    split = _Split(by, num_clients, alpha, min_partition_size)
    try:
        return [[records[i] for i in sorted(part.tolist())]
                for part in split_pool(labels, split, seed, shuffle_iid=True)]
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
