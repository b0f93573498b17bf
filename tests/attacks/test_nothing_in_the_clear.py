"""The curious server's view of a real secure round: the real ClientApp (its train path, DP
clipping and metrics, its evaluate path) and the real FederatedRun over the in-process Grid,
under client-level DP, whose train path also measures each client's update norm.

No message the server receives may hold anything correlated with one client's update, nor any
per-client data-dependent figure: no plain update, no example count, loss, accuracy or norm;
only protocol fields, masked vectors and the partition id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from fedmirasol.client import task as client_task
from fedmirasol.runs import run_dir as rundir
from fedmirasol.secagg import protocol
from secagg_app_fixtures import local_grid, run, secagg_config

STAGE_FIELDS = {  # what each stage's reply may carry in its stage record
    protocol.KEYS: {"pk-mask", "pk-enc", "seed-commitment", "identity", "signature"},
    protocol.SHARES: {"dst", "ciphertexts"},
    protocol.CONSISTENCY: {"signature"},
    protocol.UNMASK: {"nodes", "shares"},
}


def test_no_reply_holds_a_per_client_figure_or_the_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    updates: dict[int, np.ndarray] = {}
    figures: dict[int, dict[str, float]] = {}
    train = client_task.train

    def spy(config, partition_id, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = train(config, partition_id, *args, **kwargs)
        updates[partition_id] = np.concatenate([v.ravel() for v in result.update.values()])
        figures[partition_id] = {"num-examples": result.num_examples, **result.metrics}
        return result

    monkeypatch.setattr(client_task, "train", spy)
    received: list[Message] = []
    config = secagg_config(1, **{"strategy.name": "fedavg", "secagg.enabled": True,
                                 "privacy.client-level": True,
                                 "privacy.client-clip-norm": 0.05})
    run(config, tmp_path, local_grid(observe=received.append))
    (round_1,) = [r for r in rundir.read_metrics(tmp_path) if r["round"] == 1]
    assert round_1["aggregate_kept_previous"] is None and round_1["evaluate_failed"] is None
    # evaluated as a secure sum; under DP the private validation splits release no figure
    # into it (an unnoised sum is not DP), so it holds the weights and counts only
    assert round_1["federated_accuracy"] is None
    assert sorted(updates) == [0, 1, 2] and "update-norm" in figures[0]

    stages = {m.metadata.message_type for m in received}
    assert {"train", "evaluate"}.isdisjoint(stages)  # no plain train or evaluate reply
    assert {protocol.MASK, protocol.EVAL_MASK} <= stages
    for message in received:
        assert not message.has_error(), message.error
        metrics = message.content.metric_records
        assert set(metrics) <= {"metrics"}
        for name in metrics.get("metrics", {}):
            assert name == "partition-id" or name.startswith("dp-"), name
        records = message.content.config_records
        if message.metadata.message_type in STAGE_FIELDS:
            assert set(records) == {protocol.RECORD}
            assert set(records[protocol.RECORD]) == STAGE_FIELDS[message.metadata.message_type]
        else:
            assert not records
        arrays = message.content.array_records
        if message.metadata.message_type in (protocol.MASK, protocol.EVAL_MASK):
            assert set(arrays) == {protocol.MASKED}
            assert set(arrays[protocol.MASKED]) == {protocol.VECTOR, protocol.SUMS}
        else:
            assert not arrays
        payload = b"".join(a.data for r in arrays.values() for a in r.values())
        for update in updates.values():
            assert update.astype(np.float32).tobytes()[:32] not in payload
        if message.metadata.message_type == protocol.MASK:
            pid = int(metrics["metrics"]["partition-id"])
            masked = arrays[protocol.MASKED][protocol.VECTOR].numpy()
            signed = masked.view(np.int64 if masked.dtype == np.uint64 else np.int32)
            assert signed.size == updates[pid].size
            assert abs(np.corrcoef(signed.astype(np.float64), updates[pid])[0, 1]) < 0.1
