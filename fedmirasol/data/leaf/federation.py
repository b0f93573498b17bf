"""A LEAF dataset folder: its users (each one client), their own train/test split, their samples.

LEAF writes ``data/<dataset>/data/train/*.json`` and ``.../test/*.json`` (``preprocess.sh -t
sample``): every user's samples split into a train and a test part. A user with both parts is
one client; its train part is what it trains on, its test part what it is evaluated on, as in
LEAF's reference implementation (which requires the ``sample`` split too). Users are sampled
by seed; nothing but the chosen users' bytes is ever parsed (`fedmirasol.data.leaf.index`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmirasol.data.leaf.index import FileIndex, LeafFormatError, index_file
from fedmirasol.data.leaf.tasks import (
    TASK_SPECS, TASKS, LeafImageError, LeafTask, SampleSite, infer_task,
)
from fedmirasol.errors import ConfigError

log = logging.getLogger("fedmirasol.data.leaf")

SPLITS = ("train", "test")
Example = tuple[torch.Tensor, int]


def find_root(path: str | Path) -> Path:
    """The folder holding LEAF's ``train/`` and ``test/``: `path` itself or its ``data/``."""
    path = Path(path).expanduser()
    for base in (path, path / "data"):
        if all((base / split).is_dir() for split in SPLITS):
            return base
    if not path.exists():
        raise FileNotFoundError(f"data.leaf-path = {str(path)!r} does not exist")
    raise ConfigError(f"data.leaf-path = {str(path)!r} has no train/ and test/ folders of LEAF "
                      "JSON files (LEAF's preprocess.sh writes them to data/<dataset>/data/)")


@dataclass(frozen=True)
class UserExamples:
    """One user's samples of one split, as model inputs and labels, and what was skipped."""

    examples: list[Example]
    skipped: Counter


class LeafFederation:
    """The users of one LEAF dataset folder and their samples (read on demand)."""

    def __init__(self, path: str | Path, task: str = "") -> None:
        self.root = find_root(path)
        self.files = {split: self._indexes(split) for split in SPLITS}
        owners = {split: self._owners(split) for split in SPLITS}
        self.owners = owners
        both = {user for user in set(owners["train"]) & set(owners["test"])
                if all(owners[split][user].num_samples[user] > 0 for split in SPLITS)}
        self.users: tuple[str, ...] = tuple(sorted(both))
        if not self.users:
            raise ConfigError(
                f"data.leaf-path = {str(self.root)!r}: no user has both train and test samples "
                f"({len(owners['train'])} train users, {len(owners['test'])} test users); split "
                "each user's samples with LEAF's `preprocess.sh -t sample`, as LEAF's reference "
                "models require")
        left_out = len(set(owners["train"]) | set(owners["test"])) - len(both)
        if left_out:
            log.warning("LEAF data %s: %d user(s) without both train and test samples are left "
                        "out (each client trains on its train part and is evaluated on its test "
                        "part)", self.root, left_out)
        self.task: LeafTask = TASK_SPECS[task or self._inferred_task()]

    # ---- files and users

    def _indexes(self, split: str) -> list[FileIndex]:
        files = sorted((self.root / split).glob("*.json"))
        if not files:
            raise ConfigError(f"data.leaf-path: {self.root / split} holds no .json files")
        return [index_file(file) for file in files]

    def _owners(self, split: str) -> dict[str, FileIndex]:
        owners: dict[str, FileIndex] = {}
        for index in self.files[split]:
            for user in index.users:
                if user in owners:
                    raise LeafFormatError(index.path, f"also listed in {owners[user].path} "
                                          f"({split}/ lists each user once)", user)
                owners[user] = index
        return owners

    def _inferred_task(self) -> str:
        user = self.users[0]
        index = self.owners["train"][user]
        x = index.read(user)["x"]
        if not x:
            raise LeafFormatError(index.path, "has no samples to tell the task from; set "
                                  f"data.leaf-task to one of {TASKS}", user)
        return infer_task(x[0], index.path, user)

    def sample_users(self, count: int, seed: int) -> list[str]:
        """`count` users drawn without replacement (seeded), in sorted order: partition id i
        is the i-th of them."""
        if count > len(self.users):
            raise ConfigError(f"data.num-clients = {count} but the LEAF data at "
                              f"{str(self.root)!r} has {len(self.users)} users with train and "
                              "test data; lower data.num-clients")
        chosen = np.random.default_rng([seed, 0x1EAF]).choice(len(self.users), count,
                                                              replace=False)
        return sorted(self.users[int(i)] for i in chosen)

    def raw(self, user: str, split: str) -> dict[str, Any]:
        """The user's ``{"x", "y"}`` of `split`, exactly as its file holds them (checked)."""
        return self.owners[split][user].read(user)

    def hierarchy(self, user: str) -> Any:
        return self.owners["train"][user].hierarchies.get(user)

    # ---- samples

    def num_classes(self, users: list[str]) -> int:
        """The task's classes; for synthetic data, 1 + the largest label of `users`."""
        if self.task.num_classes is not None:
            return self.task.num_classes
        return 1 + max(max(self.labels(user, split, 2**31), default=0)
                       for user in users for split in SPLITS)

    @cached_property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of every model input: that of the first user's first training sample."""
        user = self.users[0]
        index = self.owners["train"][user]
        x = index.read(user)["x"]
        if not x:
            raise LeafFormatError(index.path, "has no training samples", user)
        return tuple(self.task.input_of(x[0], SampleSite(index.path, user, 0, self.root)).shape)

    def labels(self, user: str, split: str, num_classes: int) -> list[int]:
        """The user's `split` labels (checked), without converting any input."""
        index = self.owners[split][user]
        return [self.task.label(y, SampleSite(index.path, user, i, self.root), num_classes)
                for i, y in enumerate(self.raw(user, split)["y"])]

    def examples(self, user: str, split: str, num_classes: int) -> UserExamples:
        """The user's `split` samples as (model input, label); CelebA images that cannot be
        read are skipped and counted (``skipped_files``, ``skipped_<reason>``)."""
        index = self.owners[split][user]
        data = index.read(user)
        examples: list[Example] = []
        skipped: Counter = Counter()
        for i, (x, y) in enumerate(zip(data["x"], data["y"])):
            site = SampleSite(index.path, user, i, self.root)
            try:
                value = self.task.input_of(x, site)
            except LeafImageError as error:
                skipped["skipped_files"] += 1
                skipped[f"skipped_{error.reason}"] += 1
                log.warning("skipping %s", error)
                continue
            if tuple(value.shape) != self.input_shape:
                raise site.error(f"x has shape {tuple(value.shape)} but the dataset's inputs "
                                 f"are {self.input_shape} (its first user's first sample)")
            examples.append((value, self.task.label(y, site, num_classes)))
        return UserExamples(examples, skipped)
