"""Each client's local train/validation data and the server's held-out test set.

Both ends rebuild the same data from the run config alone (seeded), so nothing but the config
travels. `data.source = "synthetic"` renders procedural clips (with `task.name = "videoqa"`, a
question about each, `fedmirasol.data.videoqa`); `data.source = "manifest"` hands over to the
media ingestion package (PyAV) when it is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fedmirasol.data import poisoning
from fedmirasol.data.batch import Sample, UnavailableSample, collate
from fedmirasol.data.questions import QUESTION_TYPES
from fedmirasol.data.synthetic import DomainShift, SyntheticAVDataset, SyntheticConfig
from fedmirasol.config.robustness import DATA_ATTACKS
from fedmirasol.config.run import RunConfig
from fedmirasol.core.seeds import seed_for
from fedmirasol.data.partitioning import ClientSpec, client_specs, label_histogram
from fedmirasol.task import leaf
from fedmirasol.models.tokenizer import ByteTokenizer
from fedmirasol.training.pretraining import synthetic_prompts

TEST_SEED_OFFSET = 1_000_003  # the test set never shares clips with the client pool
ROOT_SEED_OFFSET = 2_000_029  # nor the server's root data (FLTrust) with either
LABEL_SEED = 0x1ABE1  # which training clips keep their labels under data.label-fraction


@dataclass(frozen=True)
class ClientData:
    spec: ClientSpec
    train: Dataset
    val: Dataset
    # Bad media files met while loading (each dropped, never replaced by another clip):
    # `skipped_files` and `skipped_<reason>`; empty for synthetic data.
    skipped: dict[str, int] = field(default_factory=dict)
    # Who each training clip comes from (privacy.unit = "user"); None: no grouping known
    users: tuple[str, ...] | None = None


class Materialized(Dataset):
    """A dataset rendered once and kept in memory (clients see it every round); an item the
    source cannot produce (`UnavailableSample`) is left out, and `kept` names the others."""

    def __init__(self, source: Dataset) -> None:
        self.samples: list[Sample] = []
        self.kept: list[int] = []
        for index in range(len(source)):  # type: ignore[arg-type]
            try:
                self.samples.append(source[index])
            except UnavailableSample:
                continue
            self.kept.append(index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def partition_summary(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per client: sizes, label histogram, domain and missing modalities (for the run dir);
    empty when every site brings its own data (the server never sees it)."""
    if config.data.source == "site":
        return []
    if config.data.source == "leaf":
        return leaf.partition_summary(config)
    labels = pool_labels(config)
    num_classes = partition_classes(config)
    attackers = config.attack.attackers(config.data.num_clients, config.seed)
    return [{
        "partition-id": spec.partition_id, "train": len(spec.train_indices),
        "val": len(spec.val_indices),
        "labels": label_histogram(labels, spec.train_indices + spec.val_indices, num_classes),
        "domain": spec.domain, "drop-audio": spec.drop_audio, "drop-video": spec.drop_video,
        **({"attacker": True} if spec.partition_id in attackers else {}),
    } for spec in specs(config)]


def partition_classes(config: Mapping[str, Any]) -> int:
    """How many values the pool's partition key takes: classes, or question types (videoqa)."""
    if config.task.name == "videoqa":
        return len(QUESTION_TYPES)
    return config.model.mirasol.num_classes


def synthetic_config(config: Mapping[str, Any]) -> SyntheticConfig:
    return SyntheticConfig.for_model(config.model.mirasol)


def class_prompts(config: Mapping[str, Any]) -> list[list[str]] | None:
    """Zero-shot prompts per class for a contrastive objective: the synthetic task's captions
    of each class; None for media files (retrieval only)."""
    if config.data.source != "synthetic" or config.pretrain.objective != "contrastive":
        return None
    return synthetic_prompts(config.model.mirasol)


def pool_size(config: Mapping[str, Any]) -> int:
    data = config.data
    return data.num_clients * data.clips_per_client


def pool_labels(config: Mapping[str, Any]) -> np.ndarray:
    """Labels of the whole client pool (read without rendering any clip)."""
    labels = getattr(_pool_dataset(config, None), "labels", None)
    if labels is None:
        raise ValueError("the data source gives no `labels` array to partition by")
    return np.asarray(labels, dtype=np.int64)


def domain_shift(config: Mapping[str, Any], domain: int | None) -> DomainShift | None:
    if domain is None:
        return None
    seed = int(np.random.SeedSequence([config.seed, domain, 0xD0]).generate_state(1)[0])
    return DomainShift.random(seed, config.data.domain_strength)


def specs(config: Mapping[str, Any]) -> list[ClientSpec]:
    """Every client's partition, from the config alone."""
    if config.data.source == "leaf":
        return leaf.specs(config)
    return client_specs(pool_labels(config), config.data, config.seed)


def _manifest_module() -> Any:
    try:
        return importlib.import_module("fedmirasol.data.media.dataset")
    except ModuleNotFoundError as error:
        raise ValueError(
            "data.source = 'manifest' needs fedmirasol.data.media.dataset "
            "(media ingestion), which is not installed in this build"
        ) from error


def _pool_dataset(config: Mapping[str, Any], spec: ClientSpec | None) -> Dataset:
    """The client pool as client `spec` sees it (its domain, its missing modalities)."""
    if config.data.source == "manifest":
        # The manifest's clips form the pool; the media package decodes them (PyAV); a clip
        # that fails is dropped, never replaced by another.
        return _manifest_module().manifest_pool(config.data.manifest, config.model.mirasol,
                                                score_captions=config.task.name == "videoqa",
                                                substitute=spec is None)
    return synthetic_dataset(
        config, pool_size(config), seed=config.seed,
        domain=domain_shift(config, spec.domain) if spec else None,
        drop_audio=bool(spec and spec.drop_audio), drop_video=bool(spec and spec.drop_video),
    )


def synthetic_dataset(config: Mapping[str, Any], size: int, seed: int, **kwargs: Any) -> Dataset:
    """`size` synthetic clips for the run's task: labelled clips, or one question per clip
    (`task.name = "videoqa"`, partitioned by question type)."""
    if config.task.name == "videoqa":
        from fedmirasol.data.videoqa import SyntheticVideoQA

        task = config.task
        return SyntheticVideoQA(synthetic_config(config), size, seed=seed,
                                question_types=task.question_types, late_tone=task.late_tone,
                                **kwargs)
    return SyntheticAVDataset(synthetic_config(config), size, seed=seed, **kwargs)


def _site_data(config: Mapping[str, Any], partition_id: int) -> ClientData:
    """A deployed site's own manifest, whole, split into train/validation."""
    manifest = config.data.manifest
    if not manifest:
        raise ValueError("data.source = 'site' needs the site's manifest: start the SuperNode "
                         "with --node-config '... data.manifest=\"PATH\"'")
    train, val = _manifest_module().load_manifest_datasets(
        manifest, config.model.mirasol, val_fraction=config.data.val_fraction,
        seed=config.seed, score_captions=config.task.name == "videoqa", substitute=False)
    train_kept, val_kept = _decodable(train), _decodable(val)
    spec = ClientSpec(partition_id, tuple(train_kept), tuple(val_kept), None, False, False)
    skipped = dict(Counter(train.skip_metrics()) + Counter(val.skip_metrics()))
    owners = train.owners()
    return ClientData(spec=spec, train=Subset(train, train_kept), val=Subset(val, val_kept),
                      skipped=skipped,
                      users=_users([owners[i] for i in train_kept], train_kept))


def _decodable(dataset: Dataset) -> list[int]:
    """The items of a site's dataset that decode (each file is decoded once here, and served
    from the decode cache afterwards); the others are dropped and counted."""
    kept = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        try:
            dataset[index]
        except UnavailableSample:
            continue
        kept.append(index)
    return kept


def _users(owners: Sequence[str | None], positions: Sequence[int]) -> tuple[str, ...] | None:
    """Each clip's user id, or None when no clip names one (then nothing groups them)."""
    if not any(owner is not None for owner in owners):
        return None
    return tuple(owner if owner is not None else f"clip-{i}"
                 for owner, i in zip(owners, positions))


@functools.lru_cache(maxsize=16)
def _client_data_cached(config: RunConfig, partition_id: int) -> ClientData:
    if config.data.source == "site":
        return _site_data(config, partition_id)
    if config.data.source == "leaf":
        spec, train, val, skipped = leaf.client_datasets(config, partition_id)
        return ClientData(spec=spec, train=train, val=val, skipped=skipped)
    all_specs = _specs_cached(config)
    if not 0 <= partition_id < len(all_specs):
        raise ValueError(f"partition id {partition_id} is outside data.num-clients = "
                         f"{len(all_specs)}")
    spec = all_specs[partition_id]
    pool = _pool_dataset(config, spec)
    train = Materialized(Subset(pool, list(spec.train_indices)))
    if config.data.label_fraction < 1.0:
        keep_labels(train, config.data.label_fraction,
                    np.random.default_rng([config.seed, partition_id, LABEL_SEED]))
    val = Materialized(Subset(pool, list(spec.val_indices)))
    skipped = pool.skip_metrics() if hasattr(pool, "skip_metrics") else {}
    indices = [spec.train_indices[i] for i in train.kept]
    return ClientData(spec=spec, train=train, val=val, skipped=skipped,
                      users=_pool_users(config, pool, indices))


def _pool_users(config: Mapping[str, Any], pool: Dataset, indices: Sequence[int]
                ) -> tuple[str, ...] | None:
    """The user of each of the pool's clips at `indices`: the manifest's user/video column,
    or (synthetic) one simulated person per `data.clips-per-user` of the client's clips."""
    if hasattr(pool, "records"):
        return _users([pool.records[i].owner for i in indices], indices)
    per_user = config.data.clips_per_user
    return tuple(f"person-{n // per_user}" for n in range(len(indices))) if per_user else None


def keep_labels(dataset: Materialized, fraction: float, rng: np.random.Generator) -> None:
    """Keep the label and caption of `fraction` of the clips (at least one, drawn by `rng`);
    the others become unlabelled clips: label -1 and no caption."""
    kept = set(rng.permutation(len(dataset))[:max(1, round(fraction * len(dataset)))].tolist())
    for index, sample in enumerate(dataset.samples):
        if index not in kept:
            dataset.samples[index] = {**sample, "label": torch.tensor(-1),
                                      "text": torch.full_like(sample["text"], ByteTokenizer.pad_id)}


@functools.lru_cache(maxsize=4)
def _specs_cached(config: RunConfig) -> tuple[ClientSpec, ...]:
    return tuple(specs(config))


def data_key(config: RunConfig) -> RunConfig:
    """The part of the config that determines the data (a cache key): its seed, data and
    model sections, everything else at the defaults (not validated again)."""
    return RunConfig.model_construct(seed=config.seed, data=config.data, model=config.model,
                                     task=config.task)


def client_data(config: Mapping[str, Any], partition_id: int, server_round: int = 0
                ) -> ClientData:
    """Client `partition_id`'s train/validation data (rendered once per process); in a round
    where the client is a data-poisoning attacker (`attack.kind` label-flip or backdoor), its
    training data poisoned; in an audit (`fedmirasol privacy-audit`), with the canary clips the
    auditor gave this site (`audit.canary-dir`) in its training split."""
    attack = config.attack
    if server_round and attack.kind in DATA_ATTACKS and attack.attacks(
            partition_id, server_round, config.data.num_clients, config.seed):
        return _poisoned_cached(poison_key(config), partition_id)
    if config.audit.canary_dir:
        return _with_canaries(data_key(config), config.audit.canary_dir, partition_id)
    return _client_data_cached(data_key(config), partition_id)


def poison_key(config: RunConfig) -> RunConfig:
    """`data_key` plus the attack section (a cache key of the poisoned data)."""
    return RunConfig.model_construct(seed=config.seed, data=config.data, model=config.model,
                                     task=config.task, attack=config.attack)


@functools.lru_cache(maxsize=4)
def _poisoned_cached(config: RunConfig, partition_id: int) -> ClientData:
    clean = _client_data_cached(data_key(config), partition_id)
    attack, mirasol = config.attack, config.model.mirasol
    if attack.kind == "label-flip":
        train = poisoning.label_flipped(clean.train, mirasol.num_classes)
    else:
        train = poisoning.backdoored(clean.train, target=attack.target_class,
                                     trigger=attack.trigger, fraction=attack.poison_fraction,
                                     sample_rate=mirasol.sample_rate,
                                     seed=seed_for(config.seed, partition_id, 0xBAD))
    return ClientData(spec=clean.spec, train=train, val=clean.val, skipped=clean.skipped)


def attack_test_dataset(config: Mapping[str, Any]) -> Dataset | None:
    """The server's test set poisoned the way the run's attack poisons (the accuracy on it is
    the attack success rate); None for attacks without a target."""
    return _attack_test_cached(poison_key(config))


@functools.lru_cache(maxsize=2)
def _attack_test_cached(config: RunConfig) -> Dataset | None:
    attack, mirasol = config.attack, config.model.mirasol
    if attack.kind == "backdoor":
        return poisoning.backdoor_test_set(test_dataset(config), target=attack.target_class,
                                           trigger=attack.trigger,
                                           sample_rate=mirasol.sample_rate)
    if attack.kind == "label-flip":
        return poisoning.label_flip_test_set(test_dataset(config), mirasol.num_classes)
    return None


@functools.lru_cache(maxsize=4)
def _with_canaries(key: RunConfig, directory: str, partition_id: int) -> ClientData:
    """The client's data whose training split also holds this site's canaries, each its own
    user."""
    from torch.utils.data import ConcatDataset

    from fedmirasol.privacy.audit.canaries import read_client_canaries

    data = _client_data_cached(key, partition_id)
    canaries, ids = read_client_canaries(directory, partition_id)
    if not canaries:
        return data
    users = None if data.users is None else data.users + tuple(f"canary-{i}" for i in ids)
    return dataclasses.replace(data, train=ConcatDataset([data.train, canaries]), users=users)


@functools.lru_cache(maxsize=2)
def _test_cached(config: RunConfig) -> Dataset:
    if config.data.source == "leaf":
        return leaf.test_dataset(config)
    dataset = synthetic_dataset(config, config.data.test_clips,
                                seed=config.seed + TEST_SEED_OFFSET)
    return Materialized(dataset)


def test_dataset(config: Mapping[str, Any]) -> Dataset:
    """The server's held-out test set (neutral domain, both modalities; LEAF: the sampled
    users' test parts)."""
    return _test_cached(data_key(config))


@functools.lru_cache(maxsize=2)
def _root_cached(config: RunConfig, size: int) -> Dataset:
    return Materialized(synthetic_dataset(config, size, seed=config.seed + ROOT_SEED_OFFSET))


def root_dataset(config: Mapping[str, Any]) -> Dataset:
    """The server's own clean root data (`strategy.name = "fltrust"`): `defense.root-clips`
    synthetic clips of the neutral domain, from a seed that neither the client pool nor the
    test set uses."""
    if config.data.source != "synthetic":
        raise ValueError("the server's root data is synthetic only: data.source = "
                         f"{config.data.source!r}")
    return _root_cached(data_key(config), config.defense.root_clips)


def pooled_train(config: Mapping[str, Any], partition_ids: Sequence[int] | None = None) -> Dataset:
    """All clients' training data together (the centralized baseline's data)."""
    from torch.utils.data import ConcatDataset

    ids = range(config.data.num_clients) if partition_ids is None else partition_ids
    return ConcatDataset([client_data(config, pid).train for pid in ids])


def loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    import torch

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate, num_workers=0)
