"""End to end in Flower's simulation engine (Ray): run directory, failures, resume, many clients.

One uninterrupted run is shared by most tests (Ray starts slowly); the resume test interrupts
a second run after round 2, resumes it, and compares with the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmirasol.cli import main as cli_main
from fedmirasol.runs import run_dir as rundir
from fedmirasol.core.seeds import seed_for
from fedmirasol.config import load_config
from fedmirasol.engines.simulation import StopRun, simulate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
# FedBN over 5 clients, 4 sampled per round; client 4 crashes, client 3 replies with NaN.
OVERRIDES = [
    f"num-rounds={ROUNDS}", "data.num-clients=5", "data.clips-per-client=8",
    "data.test-clips=12", "model.num-frames=8", "client.batch-size=4",
    "strategy.name=fedbn", "strategy.fraction-train=0.8", "strategy.min-train-nodes=2",
    "data.partitioner=iid", "data.domains=5", "faults.crash-clients='4'",
    "faults.nan-clients='3'",
]


def config(tmp: Path, *extra: str) -> dict:
    return load_config(None, OVERRIDES + [f"output.runs-dir='{tmp}'", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(config(tmp_path_factory.mktemp("runs")), progress=None)


def final_metrics(run_dir: Path) -> dict:
    last = rundir.read_metrics(run_dir)[-1]
    return {k: last[k] for k in ("round", "centralized_accuracy", "centralized_loss",
                                 "federated_accuracy", "federated_loss", "train_loss",
                                 "participants", "clients")}


def test_run_directory_has_everything(full_run: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "report.json", "final_model.pt"):
        assert (full_run / name).is_file(), name
    for name in ("accuracy_loss.png", "client_accuracy.png", "bytes.png"):
        assert (full_run / "plots" / name).stat().st_size > 1000
    assert json.loads((full_run / "config.json").read_text())["strategy"]["name"] == "fedbn"
    assert sorted((full_run / "checkpoints").glob("round-*.json"))[-1].name == "round-0003.json"
    state = torch.load(full_run / "final_model.pt", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_metrics_has_one_record_per_round(full_run: Path) -> None:
    records = rundir.read_metrics(full_run)
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for r in records[1:]:
        for key in ("train_loss", "centralized_accuracy", "centralized_loss",
                    "federated_accuracy", "federated_loss", "clients", "participants",
                    "bytes_down", "bytes_up", "duration_s"):
            assert r[key] is not None, key
        assert len(r["sampled"]) == 4  # fraction-train 0.8 of 5
        assert r["bytes_down"] > r["bytes_up"] > 0
        assert set(r["clients"]) == {str(i) for i in range(5)}  # all evaluate
        accs = [c["val_accuracy"] for c in r["clients"].values()]
        assert min(accs) >= 0 and max(accs) <= 1


def test_failed_and_poisoned_clients_are_recorded_not_aggregated(full_run: Path) -> None:
    records = rundir.read_metrics(full_run)[1:]
    for r in records:
        reasons = {x["partition-id"]: x["reason"] for x in r["rejected"]}
        assert set(reasons) == {4, 3} & set(r["sampled"])
        if 4 in reasons:
            assert "crashed on purpose" in reasons[4]
        if 3 in reasons:
            assert "NaN" in reasons[3]
        assert not {3, 4} & set(r["participants"])
        assert set(r["participants"]) == set(r["sampled"]) - {3, 4}
    report = rundir.read_report(full_run)
    assert report["total_rejected_updates"] == sum(len(r["rejected"]) for r in records) > 0


def test_global_model_never_holds_nan(full_run: Path) -> None:
    for path in sorted((full_run / "checkpoints").glob("round-*.json")):
        checkpoint = rundir.read_checkpoint(path)
        assert all(np.isfinite(v).all() for v in checkpoint.global_shared.values())
        assert not any("norm" in k for k in checkpoint.global_shared)  # FedBN: shared only


def test_sampling_is_flowers_seeded_per_round_over_partition_order(full_run: Path) -> None:
    for record in rundir.read_metrics(full_run)[1:]:
        random.seed(seed_for(0, record["round"], 1))
        assert record["sampled"] == sorted(random.sample(range(5), 4))


def test_interrupted_and_resumed_run_ends_like_the_uninterrupted_one(
        full_run: Path, tmp_path: Path) -> None:
    def stop_after_round_2(record: dict) -> None:
        if record["round"] == 2:
            raise StopRun("interrupted by the test")

    with pytest.raises(StopRun):
        simulate(config(tmp_path), progress=stop_after_round_2)
    (interrupted,) = tmp_path.iterdir()
    assert not (interrupted / "report.json").exists()
    assert [r["round"] for r in rundir.read_metrics(interrupted)] == [0, 1, 2]
    resumed = simulate(resume=interrupted, progress=None)
    assert resumed == interrupted
    assert [r["round"] for r in rundir.read_metrics(resumed)] == [0, 1, 2, 3]
    ours, reference = final_metrics(resumed), final_metrics(full_run)
    assert ours["participants"] == reference["participants"]
    for key in ("centralized_accuracy", "centralized_loss", "federated_accuracy",
                "federated_loss", "train_loss"):
        assert math.isclose(ours[key], reference[key], rel_tol=1e-4, abs_tol=1e-6), key
    for pid, row in reference["clients"].items():
        assert math.isclose(ours["clients"][pid]["val_loss"], row["val_loss"], rel_tol=1e-4)


def test_report_command_rebuilds_plots_and_prints_summary(full_run: Path, capsys) -> None:
    for png in (full_run / "plots").glob("*.png"):
        png.unlink()
    assert cli_main(["report", str(full_run)]) == 0
    out = capsys.readouterr().out
    assert "central_acc" in out and "final_centralized_accuracy" in out
    assert sorted(png.name for png in (full_run / "plots").glob("*.png")) == [
        "accuracy_bytes.png", "accuracy_loss.png", "bytes.png", "client_accuracy.png"]


def test_simulate_command_names_a_bad_key(capsys) -> None:
    assert cli_main(["simulate", "--set", "strategy.nmae=fedavg"]) == 2
    assert "strategy.nmae" in capsys.readouterr().err


def test_many_clients_config_runs(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "simulations" / "many-clients.toml",
                      ["num-rounds=1", "data.test-clips=8", f"output.runs-dir='{tmp_path}'"])
    run = simulate(cfg, progress=None)
    (record,) = rundir.read_metrics(run)[1:]
    assert cfg.data.num_clients >= 100
    assert len(record["sampled"]) == 10 and len(record["participants"]) == 10
    assert not record["rejected"]
    assert math.isfinite(record["centralized_accuracy"])


def test_a_client_past_the_round_timeout_is_recorded_and_the_round_goes_on(
        tmp_path: Path) -> None:
    cfg = load_config(None, [
        "num-rounds=1", "data.num-clients=3", "data.clips-per-client=6", "data.test-clips=4",
        "model.num-frames=8", "client.batch-size=4", "data.partitioner=iid",
        "strategy.round-timeout=20.0", "faults.slow-clients='2'", "faults.slow-seconds=45.0",
        "strategy.fraction-evaluate=0.0", f"output.runs-dir='{tmp_path}'",
    ])
    run = simulate(cfg, progress=None)
    (record,) = rundir.read_metrics(run)[1:]
    assert record["sampled"] == [0, 1, 2]
    assert record["participants"] == [0, 1]
    assert [(r["partition-id"], r["reason"]) for r in record["rejected"]] == [
        (2, "no reply within round-timeout (20 s)")]
    assert math.isfinite(record["centralized_accuracy"])
