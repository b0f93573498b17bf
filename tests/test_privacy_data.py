"""Under DP a clip that fails to decode is dropped, never replaced by another clip: a
substitute would be drawn at twice the sampling rate the accountant assumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmirasol.client.site import apply_site
from fedmirasol.config import load_config
from fedmirasol.data.media.synth import write_synthetic_media
from fedmirasol.task import data as client_data


def manifest_with_two_bad_files(folder: Path, model_config) -> Path:
    manifest = write_synthetic_media(folder, 4, model_config)
    (folder / "clips" / "clip_00001.mp4").write_text("not a video")
    (folder / "clips" / "clip_00003.mp4").write_bytes(b"")
    return manifest


@pytest.mark.parametrize("source", ["site", "manifest"])
def test_bad_clips_are_dropped_and_counted_under_dp(tmp_path, source) -> None:
    base = ["data.num-clients=1", "model.num-frames=8", "data.val-fraction=0",
            "privacy.enabled=true", "strategy.min-train-nodes=1",
            "strategy.min-available-nodes=1", "strategy.min-evaluate-nodes=1",
            "data.partitioner='iid'", "data.min-partition-size=1"]
    config = load_config(None, base + [f"data.source='{source}'"] + (
        [] if source == "site" else [f"data.manifest='{tmp_path / 'media' / 'manifest.csv'}'"]))
    manifest = manifest_with_two_bad_files(tmp_path / "media", config.model.mirasol)
    if source == "site":
        config = apply_site(config, {"partition-id": 0, "data.manifest": str(manifest)})
    data = client_data.client_data(config, 0)
    videos = [data.train[i]["video"] for i in range(len(data.train))]
    # the good files (0 and 2) among the client's training clips, each once
    good = [i for i in data.spec.train_indices if i in (0, 2)] if source == "manifest" \
        else [0, 2]
    assert len(videos) == len(good) >= 1
    assert all(not torch.equal(a, b) for j, a in enumerate(videos) for b in videos[j + 1:])
    bad = 2 if source == "site" else len(set(data.spec.train_indices + data.spec.val_indices)
                                             & {1, 3})
    assert data.skipped["skipped_files"] == bad
