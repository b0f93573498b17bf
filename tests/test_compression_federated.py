"""Compressed updates in real short runs (the real ClientApp and server loop over the in-process
Grid, tiny model, 2 clients): the server's aggregate is the aggregate of the decoded updates,
the bytes in metrics.jsonl are the serialized sizes of what went over the Grid, the downlink
replica shrinks what goes down, FedBN's local layers stay out of the payload, and under DP
the privacy ledger is the same with and without compression."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import state as client_state
from fedmirasol.compression.codec import from_payload_record
from fedmirasol.compression.registry import update_codec
from fedmirasol.compression.uplink import RESIDUAL_KEY
from fedmirasol.config import load_config
from fedmirasol.core import vector
from fedmirasol.core.metrics import wire_bytes
from fedmirasol.core.parameters import model_state
from fedmirasol.engines.apps import build_client_app
from fedmirasol.privacy import ledger
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.resume import open_run
from fedmirasol.server.loop import FederatedRun
from fedmirasol.task.model import init_model, parameter_split
from fedmirasol.testing.local_grid import LocalGrid

pytestmark = pytest.mark.slow

TINY = {"data.num-clients": 2, "data.clips-per-client": 8, "data.test-clips": 4,
        "model.num-frames": 8, "client.batch-size": 4, "client.local-epochs": 1,
        "client.threads": 1, "strategy.min-train-nodes": 2, "strategy.min-available-nodes": 2,
        "strategy.min-evaluate-nodes": 2, "num-rounds": 2}
COMPRESSED = {"strategy.name": "fedbn", "compression.codec": "quantize", "compression.bits": 4,
              "compression.bucket-size": 64, "compression.downlink": "quantize"}


class RecordingGrid(LocalGrid):
    """The in-process Grid, keeping every train/evaluate exchange with its serialized sizes
    taken as it happens (the server decodes replies in place afterwards)."""

    def __init__(self) -> None:
        super().__init__(build_client_app(), {node: {"partition-id": i, "num-partitions": 2}
                                              for i, node in enumerate([11, 12])})
        self.exchanges: list[dict] = []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        sizes = {m.metadata.dst_node_id: wire_bytes(m) for m in messages}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if messages and messages[0].metadata.message_type in ("train", "evaluate"):
            self.exchanges.append({
                "type": messages[0].metadata.message_type, "down": sizes,
                "up": {r.metadata.src_node_id: wire_bytes(r) for r in replies},
                "payloads": {r.metadata.src_node_id: r.content.array_records.get("arrays")
                             for r in replies},
                "weights": {r.metadata.src_node_id: r.content.metric_records["metrics"][
                    "num-examples"] for r in replies if r.content.metric_records}})
        return replies


def run(runs: Path, settings: dict, grid: LocalGrid | None = None) -> Path:
    values = TINY | settings | {"output.runs-dir": str(runs)}
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])
    opened = open_run(config)
    FederatedRun(grid or RecordingGrid(), opened.config, opened.run_dir).run()
    return opened.run_dir


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RecordingGrid]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    grid = RecordingGrid()
    return run(tmp_path_factory.mktemp("runs"), COMPRESSED, grid), grid


def test_the_new_model_is_the_mean_of_the_decoded_updates(compressed) -> None:
    run_dir, grid = compressed
    config = rundir.read_config(run_dir)
    model = init_model(config)
    initial = model_state(model, parameter_split(model, config).shared)
    assert not any("norm" in name for name in initial)  # FedBN: norms stay on the clients
    layout = vector.layout(initial)
    codec = update_codec(config.compression)
    train = grid.exchanges[0]
    assert train["type"] == "train"
    decoded = {node: from_payload_record(codec, payload, layout)
               for node, payload in train["payloads"].items()}
    weights = train["weights"]
    mean = sum(weights[n] * decoded[n].astype(np.float64) for n in decoded) \
        / sum(weights.values())
    expected = vector.flatten(initial, layout) + mean
    after_round_1 = rundir.read_checkpoint(run_dir / "checkpoints" / "round-0001.json").global_shared
    np.testing.assert_allclose(vector.flatten(after_round_1, layout), expected, atol=1e-6)


def test_bytes_counted_are_the_serialized_sizes_per_client_and_round(compressed) -> None:
    run_dir, grid = compressed
    rounds = [r for r in rundir.read_metrics(run_dir) if r["round"] > 0]
    partition = {11: "0", 12: "1"}
    for record, exchanges in zip(rounds, zip(grid.exchanges[0::2], grid.exchanges[1::2])):
        down, up = Counter(), Counter()
        for exchange in exchanges:
            down.update(exchange["down"])
            up.update(exchange["up"])
        assert record["bytes_down"] == sum(down.values())
        assert record["bytes_up"] == sum(up.values())
        for node, pid in partition.items():
            assert record["clients"][pid]["bytes_down"] == down[node]
            assert record["clients"][pid]["bytes_up"] == up[node]
    # 4-bit codes: the update travels in about an eighth of its float32 size
    shared = sum(np.prod(shape) for _, shape in vector.layout(
        rundir.read_checkpoint(run_dir / "checkpoints" / "round-0001.json").global_shared))
    assert max(grid.exchanges[0]["up"].values()) < 4 * shared / 6
    # the downlink: round 1's train message carries the model whole, later ones a change
    assert min(grid.exchanges[2]["down"].values()) < max(grid.exchanges[0]["down"].values()) / 3
    report = rundir.read_report(run_dir)
    assert report["total_bytes_up"] == sum(r["bytes_up"] for r in rounds)
    assert report["compression"] == {"codec": "quantize", "bits": 4, "bucket_size": 64,
                                     "error_feedback": True, "downlink": "quantize",
                                     "downlink_bits": 8}
    for level, reached in report["bytes_to_accuracy"].items():
        first = next(r for r in rounds if 100 * r["centralized_accuracy"] + 1e-9 >= int(level[:-1]))
        assert reached["round"] == first["round"]
        assert reached["bytes_up"] == sum(r["bytes_up"] for r in rounds
                                          if r["round"] <= first["round"])


def test_the_residual_is_mirrored_and_the_replica_is_not(compressed) -> None:
    run_dir, _ = compressed
    mirrors = sorted((run_dir / "client-state").glob("client-00000-round-*.safetensors"))
    state = client_state.read_mirror(mirrors[-1])
    assert RESIDUAL_KEY in state and "local-params" in state
    assert "compression-replica" not in state


def test_a_malformed_payload_is_rejected_by_name_and_the_round_goes_on(tmp_path: Path) -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    run_dir = run(tmp_path, {"compression.codec": "top-k", "faults.nan-clients": "1",
                             "num-rounds": 1})
    record = rundir.read_metrics(run_dir)[-1]
    assert record["participants"] == [0]
    assert [r["partition-id"] for r in record["rejected"]] == [1]
    assert "compressed update" in record["rejected"][0]["reason"]
    assert "NaN" in record["rejected"][0]["reason"]


@pytest.mark.parametrize("settings", [
    {"strategy.name": "fedprox", "strategy.proximal-mu": 0.1, "compression.codec": "low-rank"},
    {"strategy.name": "fedadam", "compression.codec": "random-k", "compression.fraction": 0.1},
], ids=["fedprox-low-rank", "fedadam-random-k"])
def test_fedprox_and_server_optimizers_step_from_the_decoded_updates(tmp_path: Path,
                                                                     settings: dict) -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    run_dir = run(tmp_path, settings | {"num-rounds": 1})
    record = rundir.read_metrics(run_dir)[-1]
    assert record["participants"] == [0, 1] and not record["rejected"]
    assert record["aggregate_kept_previous"] is None
    config = rundir.read_config(run_dir)
    model = init_model(config)
    initial = model_state(model, parameter_split(model, config).shared)
    moved = rundir.read_checkpoint(run_dir / "checkpoints" / "round-0001.json").global_shared
    assert any(not np.array_equal(initial[name], moved[name]) for name in initial)


def test_under_dp_sgd_compression_leaves_the_privacy_ledger_unchanged(tmp_path: Path) -> None:
    """Compression runs after DP-SGD on what it released (post-processing): the same epsilon,
    steps and sampling in the ledger, round by round, with and without it."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    dp = {"privacy.enabled": True, "privacy.noise-multiplier": 1.0, "num-rounds": 1}
    entries = []
    for settings in ({}, {"compression.codec": "top-k", "compression.fraction": 0.05}):
        run_dir = run(tmp_path / str(len(entries)), dp | settings)
        entries.append([{k: v for k, v in r.items() if k not in ("time",)}
                        for r in ledger.read(run_dir)])
    assert entries[0] and entries[0] == entries[1]
