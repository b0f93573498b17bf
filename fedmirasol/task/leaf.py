"""A run on a LEAF dataset (``data.source = "leaf"``): each sampled user is one client.

`data.num-clients` users are drawn by the run's seed; partition id i is the i-th of them in
sorted order, on the server and on every client alike. A client trains on its user's LEAF
train part and is evaluated on its test part (LEAF's own split, kept); the server's test set
is the test parts of all the sampled users together, so its accuracy is the sample-weighted
mean of the clients' test accuracies, which is what LEAF reports. The model takes the task's
geometry (classes, input size, vocabulary) from the data: LEAF's reference models
(`leaf-cnn`, `leaf-lstm`, `leaf-logreg`) build the task's layout, Mirasol takes image tasks as
single-frame clips without audio.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from fedmirasol.config.run import RunConfig
from fedmirasol.config.sections import DataConfig
from fedmirasol.data.leaf.federation import LeafFederation
from fedmirasol.data.leaf.samples import SampleList, image_clip, reference_sample
from fedmirasol.data.leaf.tasks import (
    IMAGE_TASKS, SENT140_BUCKETS, UNKNOWN_LETTER, LeafTask, image_size,
)
from fedmirasol.data.partitioning import ClientSpec, label_histogram
from fedmirasol.errors import ConfigError
from fedmirasol.models.config import LEAF_MODEL_TASKS, MirasolConfig

# leaf-lstm's embedding rows per task: the token ids the data layer hands out
VOCABULARY = {"shakespeare": UNKNOWN_LETTER + 1, "sent140": SENT140_BUCKETS + 1}


@dataclass(frozen=True)
class LeafPlan:
    """What every process derives from the config alone: the users and the task's geometry."""

    federation: LeafFederation
    users: tuple[str, ...]  # partition id -> LEAF user
    task: LeafTask
    num_classes: int


@functools.lru_cache(maxsize=4)
def _federation(path: str, task: str) -> LeafFederation:
    return LeafFederation(path, task)


@functools.lru_cache(maxsize=8)
def _plan(data: DataConfig, seed: int) -> LeafPlan:
    federation = _federation(data.leaf_path, data.leaf_task)
    users = federation.sample_users(data.num_clients, seed)
    return LeafPlan(federation, tuple(users), federation.task, federation.num_classes(users))


def plan(config: RunConfig) -> LeafPlan:
    return _plan(config.data, config.seed)


def model_config(config: RunConfig) -> MirasolConfig:
    """`model.*` with the LEAF task's geometry; a model that cannot take the task is refused,
    naming both keys."""
    if config.task.name != "classification":
        raise ConfigError(f"task.name = {config.task.name!r} needs clips with questions or "
                          "captions; LEAF's tasks are classification (data.source = 'leaf')")
    base, leaf = config.model.mirasol, plan(config)
    task, architecture = leaf.task.name, base.architecture
    if architecture in LEAF_MODEL_TASKS:
        if task not in LEAF_MODEL_TASKS[architecture]:
            raise ConfigError(f"model.name = {config.model.name!r} is LEAF's model for "
                              f"{LEAF_MODEL_TASKS[architecture]}, but the LEAF task is "
                              f"{task!r} (data.leaf-task); use {_model_for(task)!r}")
        changes: dict[str, Any] = {"leaf_task": task, "num_classes": leaf.num_classes}
        if task in VOCABULARY:
            changes["leaf_vocab"] = VOCABULARY[task]
        if architecture == "leaf-logreg":
            changes["leaf_input_dim"] = leaf.federation.input_shape[0]
        return base.replace(**changes)
    if architecture == "mirasol" and task in IMAGE_TASKS:
        return base.replace(num_classes=leaf.num_classes, image_size=image_size(task),
                            num_frames=1, frames_per_chunk=1)
    raise ConfigError(f"model.name = {config.model.name!r} cannot take the LEAF task {task!r}: "
                      f"Mirasol takes LEAF's image tasks {IMAGE_TASKS} (as single-frame clips); "
                      f"use {_model_for(task)!r}")


def _model_for(task: str) -> str:
    return next(name for name, tasks in LEAF_MODEL_TASKS.items() if task in tasks)


def specs(config: RunConfig) -> list[ClientSpec]:
    """Every client's partition: its user's train and test sample counts (no sample parsed).
    Checks the model against the task too, so a bad pairing fails before a run starts."""
    model_config(config)
    federation = plan(config).federation
    return [_spec(federation, pid, user) for pid, user in enumerate(plan(config).users)]


def _spec(federation: LeafFederation, pid: int, user: str) -> ClientSpec:
    train, test = (federation.owners[split][user].num_samples[user] for split in ("train", "test"))
    return ClientSpec(pid, tuple(range(train)), tuple(range(test)), None, False, False)


def _dataset(config: RunConfig, user: str, split: str) -> tuple[SampleList, Counter]:
    leaf, model = plan(config), model_config(config)
    loaded = leaf.federation.examples(user, split, leaf.num_classes)
    if model.architecture in LEAF_MODEL_TASKS:
        samples = [reference_sample(leaf.task.kind, x, y) for x, y in loaded.examples]
    else:
        samples = [image_clip(x, y, model) for x, y in loaded.examples]
    return SampleList(samples, [y for _, y in loaded.examples]), loaded.skipped


def client_datasets(config: RunConfig, partition_id: int
                    ) -> tuple[ClientSpec, Dataset, Dataset, dict[str, int]]:
    """(spec, train, validation, skipped counts) of client `partition_id`: its user's LEAF train
    and test parts."""
    users = plan(config).users
    if not 0 <= partition_id < len(users):
        raise ValueError(f"partition id {partition_id} is outside data.num-clients = "
                         f"{len(users)}")
    user = users[partition_id]
    train, train_skipped = _dataset(config, user, "train")
    val, val_skipped = _dataset(config, user, "test")
    if len(train) == 0:
        raise ConfigError(f"LEAF user {user!r} (client {partition_id}) has no usable training "
                          f"sample ({dict(train_skipped)})")
    spec = ClientSpec(partition_id, tuple(range(len(train))), tuple(range(len(val))), None,
                      False, False)
    return spec, train, val, dict(train_skipped + val_skipped)


def test_dataset(config: RunConfig) -> Dataset:
    """The test parts of every sampled user, together."""
    return ConcatDataset([_dataset(config, user, "test")[0] for user in plan(config).users])


def partition_summary(config: RunConfig) -> list[dict[str, Any]]:
    """Per client: its LEAF user (and hierarchy), its train/test sizes and label histogram."""
    leaf = plan(config)
    rows = []
    for pid, user in enumerate(leaf.users):
        train, val = (leaf.federation.labels(user, split, leaf.num_classes)
                      for split in ("train", "test"))
        labels = np.asarray(train + val, dtype=np.int64)
        row = {"partition-id": pid, "leaf-user": user, "train": len(train), "val": len(val),
               "labels": label_histogram(labels, np.arange(len(labels)), leaf.num_classes),
               "domain": None, "drop-audio": False, "drop-video": False}
        if (group := leaf.federation.hierarchy(user)) is not None:
            row["leaf-hierarchy"] = group
        rows.append(row)
    return rows
