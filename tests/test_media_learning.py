"""End to end: clips written as mp4 by `data synth`, read back through PyAV, train like the
in-memory synthetic clips they were rendered from."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from fedmirasol.data.batch import collate
from fedmirasol.data.media.dataset import load_manifest_datasets
from fedmirasol.data.media.synth import write_synthetic_media
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models import build_model, get_config
from fedmirasol.training.loop import evaluate, train_epochs

CLIPS, EPOCHS = 48, 4


def clip_number(path: str) -> int:
    return int(path.rsplit("clip_", 1)[1][:5])


def fit(train, val, config) -> tuple[float, float, dict[str, float]]:
    """(first-epoch loss, last-epoch loss, validation metrics) from one fixed init and order."""
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(train, batch_size=8, shuffle=True, generator=order, collate_fn=collate)
    losses = [train_epochs(model, loader, optimizer)["loss"] for _ in range(EPOCHS)]
    return losses[0], losses[-1], evaluate(model, DataLoader(val, batch_size=16, collate_fn=collate))


@pytest.mark.slow
def test_training_on_synth_files_matches_training_in_memory(tmp_path):
    config = get_config("tiny", num_frames=8)
    manifest = write_synthetic_media(tmp_path, CLIPS, config, seed=1)
    train, val = load_manifest_datasets(
        manifest, config, val_fraction=0.25, cache_dir=tmp_path / "cache"
    )
    memory = SyntheticAVDataset(SyntheticConfig.for_model(config), CLIPS, seed=1)
    memory_train = Subset(memory, [clip_number(r.path) for r in train.records])
    memory_val = Subset(memory, [clip_number(r.path) for r in val.records])

    first_files, last_files, val_files = fit(train, val, config)
    first_memory, last_memory, val_memory = fit(memory_train, memory_val, config)
    assert train.skipped_count() == 0
    assert last_files < 0.8 * first_files and last_memory < 0.8 * first_memory  # both learn
    assert abs(last_files - last_memory) < 0.02 * last_memory  # and alike (they agree to ~1e-5 here)
    assert abs(val_files["loss"] - val_memory["loss"]) < 0.05 * val_memory["loss"]
