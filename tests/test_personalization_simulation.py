"""A personalization run end to end: per-client global and personalized accuracy in
metrics.jsonl, their means in report.json, the plot, and personal layers absent from what the
server ever receives."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmirasol.runs import run_dir as rundir
from fedmirasol.task.model import init_model
from fedmirasol.core.parameters import ParameterSplit, model_state
from fedmirasol.config import load_config
from fedmirasol.engines.simulation import simulate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_fedper_run_reports_global_and_personalized_accuracy(tmp_path: Path) -> None:
    config = load_config(ROOT / "simulations" / "personalization.toml", [
        "num-rounds=2", "data.num-clients=3", "data.clips-per-client=12", "data.test-clips=6",
        "model.num-frames=8", "client.batch-size=4", "personalization.adapt-steps=2",
        "simulation.max-parallel-clients=1", f"output.runs-dir='{tmp_path}'"])
    run = simulate(config, progress=None)
    rounds = [r for r in rundir.read_metrics(run) if r["round"] > 0]
    assert len(rounds) == 2
    for record in rounds:
        assert record["personal_accuracy_client_mean"] is not None
        assert record["adapted_accuracy_client_mean"] is not None
        for row in record["clients"].values():
            assert {"val_accuracy", "personal_accuracy", "adapted_accuracy"} <= set(row)
        # Only the body travels up: 3 clients' deltas of the shared parameters, no head (the
        # checkpoint below holds no head either); bytes as serialized, with their metrics.
        model = init_model(config)
        shared = model_state(model, ParameterSplit.from_model(model, "").shared)
        body = {k: v for k, v in shared.items() if not k.startswith("classifier.")}
        assert record["bytes_up"] > 3 * sum(v.nbytes for v in body.values())
    report = rundir.read_report(run)
    assert report["personalization_method"] == "fedper"
    assert report["final_mean_client_personal_accuracy"] == rounds[-1][
        "personal_accuracy_client_mean"]
    assert set(report["final_client_personal_accuracy"]) == {"0", "1", "2"}
    assert not any(name.startswith("classifier.") for name in rundir.latest_checkpoint(run)
                   .global_shared)
    assert (run / "plots" / "personalization.png").is_file()
