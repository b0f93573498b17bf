"""Federated clients on a media manifest: bad files are skipped, counted and reported."""

from __future__ import annotations

import csv

import numpy as np
from flwr.app import RecordDict

from fedmirasol.data.media.synth import write_synthetic_media
from fedmirasol.task import data as client_data
from fedmirasol.client import task as client_task
from fedmirasol.config import load_config


def test_a_client_counts_and_reports_a_bad_file_and_still_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMIRASOL_CACHE", str(tmp_path / "cache"))
    settings = [
        "data.num-clients=2", "data.partitioner='iid'", "data.min-partition-size=1",
        "client.local-epochs=1", "client.batch-size=4", "num-rounds=1",
    ]
    manifest = write_synthetic_media(tmp_path / "media", 12, load_config(None, settings).model.mirasol)
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    (tmp_path / "media" / "empty.mp4").write_bytes(b"")
    rows[0] = {**rows[0], "path": "empty.mp4"}
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = load_config(None, [*settings, "data.source='manifest'", f"data.manifest='{manifest}'"])

    data = [client_data.client_data(config, pid) for pid in range(2)]
    owner = next(d for d in data if 0 in d.spec.train_indices or 0 in d.spec.val_indices)
    assert owner.skipped["skipped_files"] == 1 and owner.skipped["skipped_empty"] == 1
    # the bad clip is dropped, not replaced by another clip
    assert len(owner.train) + len(owner.val) == \
        len(owner.spec.train_indices) + len(owner.spec.val_indices) - 1

    model, _, split = client_task.model_and_split(config)
    global_shared = client_task.model_state(model, split.shared)
    result = client_task.train(config, owner.spec.partition_id, 1, global_shared, RecordDict())
    assert result.metrics["skipped_files"] == 1.0
    assert all(np.isfinite(v).all() for v in result.update.values())
