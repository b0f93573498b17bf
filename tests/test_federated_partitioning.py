"""Non-IID partitioning: IID, Dirichlet, pathological, quantity skew, domains, missing modality."""

from __future__ import annotations

import numpy as np
import pytest

from fedmirasol.data.partitioning import (
    build_partitioner,
    client_specs,
    partition_indices,
    quantity_sizes,
)
from fedmirasol.config.sections import DataConfig

NUM_CLASSES = 8
LABELS = np.random.default_rng(0).integers(NUM_CLASSES, size=800)


def data(**changes: object) -> DataConfig:
    return DataConfig().model_copy(update=changes)


def covers_pool_once(specs) -> bool:
    everything = [i for s in specs for i in s.train_indices + s.val_indices]
    return len(everything) == len(set(everything)) == len(LABELS)


def label_sets(specs) -> list[set[int]]:
    return [set(LABELS[list(s.train_indices + s.val_indices)].tolist()) for s in specs]


def test_iid_gives_equal_sizes_and_all_labels() -> None:
    specs = client_specs(LABELS, data(partitioner="iid", num_clients=8), seed=0)
    sizes = [len(s.train_indices) + len(s.val_indices) for s in specs]
    assert max(sizes) - min(sizes) <= 1
    assert covers_pool_once(specs)
    assert all(len(labels) == NUM_CLASSES for labels in label_sets(specs))


@pytest.mark.parametrize("total,clients", [(800, 8), (103, 10), (50, 7), (9, 9)])
def test_iid_shards_are_flower_datasets_iid_partitions(total: int, clients: int) -> None:
    from datasets import Dataset

    section = data(partitioner="iid", num_clients=clients)
    partitioner = build_partitioner(section, total, seed=0)
    partitioner.dataset = Dataset.from_dict({"index": np.arange(total), "label": LABELS[:total]})
    ours = partition_indices(LABELS[:total], section, seed=0)
    assert len(ours) == clients
    for pid, part in enumerate(ours):
        assert part.tolist() == list(partitioner.load_partition(pid)["index"])


def test_dirichlet_skews_labels_and_more_so_for_small_alpha() -> None:
    def skew(alpha: float) -> float:
        specs = client_specs(LABELS, data(partitioner="dirichlet", alpha=alpha, num_clients=10),
                             seed=1)
        assert covers_pool_once(specs)
        shares = []
        for s in specs:
            counts = np.bincount(LABELS[list(s.train_indices + s.val_indices)],
                                 minlength=NUM_CLASSES)
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    assert skew(0.1) > skew(100.0) + 0.15


def test_pathological_gives_k_classes_per_client() -> None:
    specs = client_specs(LABELS, data(partitioner="pathological", classes_per_client=2,
                                      num_clients=8), seed=0)
    assert all(len(labels) <= 2 for labels in label_sets(specs))


def test_quantity_skew_gives_uneven_sizes_over_the_whole_pool() -> None:
    specs = client_specs(LABELS, data(partitioner="quantity", quantity_alpha=0.5,
                                      num_clients=10), seed=0)
    sizes = [len(s.train_indices) + len(s.val_indices) for s in specs]
    assert covers_pool_once(specs)
    assert max(sizes) > 3 * min(sizes)
    big = [labels for labels, size in zip(label_sets(specs), sizes) if size >= 40]
    assert big and all(len(labels) >= 6 for labels in big)  # sizes skewed, labels not
    assert sum(quantity_sizes(100, 7, 1.0, 3, seed=2)) == 100


def test_each_client_has_train_and_validation() -> None:
    for s in client_specs(LABELS, data(val_fraction=0.25), seed=0):
        assert len(s.val_indices) >= 1 and len(s.train_indices) >= 1
        assert not set(s.val_indices) & set(s.train_indices)


def test_domains_and_missing_modalities_are_per_client_and_seeded() -> None:
    settings = data(partitioner="iid", num_clients=40, domains=4, drop_audio_prob=0.3,
                    drop_video_prob=0.2)
    specs = client_specs(LABELS, settings, seed=3)
    assert [s.domain for s in specs[:5]] == [0, 1, 2, 3, 0]
    no_audio = sum(s.drop_audio for s in specs)
    no_video = sum(s.drop_video for s in specs)
    assert 4 <= no_audio <= 20 and 2 <= no_video <= 15
    assert not any(s.drop_audio and s.drop_video for s in specs)
    assert specs == client_specs(LABELS, settings, seed=3)
    assert specs != client_specs(LABELS, settings, seed=4)


def test_too_little_data_is_an_error() -> None:
    with pytest.raises(ValueError):
        quantity_sizes(10, 5, 1.0, 4, seed=0)
