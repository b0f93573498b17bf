"""Pre-training objectives in federated rounds: the real ClientApp and FederatedRun over an
in-process Grid (three clients, tiny model), with DP-SGD and secure aggregation; the run's
final model starts a fine-tuning run; `fedmirasol train --objective`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmirasol.cli import main as cli_main
from fedmirasol.config import load_config
from fedmirasol.privacy import ledger
from fedmirasol.runs import run_dir as rundir
from fedmirasol.task.model import init_model
from secagg_app_fixtures import run, secagg_config, task_identity  # noqa: F401

pytestmark = pytest.mark.slow


def test_videomae_loss_falls_over_rounds_and_its_model_starts_fine_tuning(tmp_path: Path) -> None:
    config = secagg_config(2, **{"pretrain.objective": "videomae",
                                 "pretrain.audio-mask-ratio": 0.8})
    federated = run(config, tmp_path)
    rounds = rundir.read_metrics(tmp_path)
    losses = [r["centralized_loss"] for r in rounds]
    assert losses[0] > losses[1] > losses[2]  # the test clips' masked-patch error
    assert all(r["centralized_mae_audio"] > 0 for r in rounds) and not rounds[-1]["rejected"]
    # Only what the objective trains travels: the encoders and the decoders.
    assert all(name.startswith(("video_encoder.", "audio_encoder.", "objective."))
               for name in federated.split.shared)
    report = rundir.read_report(tmp_path)
    assert report["objective"] == "videomae"
    assert set(report["final_centralized_objective"]) >= {"mae_video", "mae_audio", "knn_accuracy"}
    pretrained = torch.load(tmp_path / rundir.FINAL_MODEL_FILE, weights_only=True)["state_dict"]
    fine_tune = init_model(load_config(None, [
        f"pretrained.checkpoint='{tmp_path / rundir.FINAL_MODEL_FILE}'",
        "data.label-fraction=0.1"]))
    own = fine_tune.state_dict()
    assert not any(name.startswith("objective.") for name in own)
    assert all(torch.equal(own[name], pretrained[name]) for name in own
               if name.startswith("video_encoder."))


def test_contrastive_under_dp_sgd_with_public_negatives_and_secure_aggregation(
        tmp_path: Path) -> None:
    config = secagg_config(1, **{"pretrain.objective": "contrastive",
                                 "pretrain.negatives": "public", "pretrain.public-negatives": 8,
                                 "privacy.enabled": True, "privacy.noise-multiplier": 1.0,
                                 "secagg.enabled": True})
    run(config, tmp_path)
    (record,) = [r for r in rundir.read_metrics(tmp_path) if r["round"] == 1]
    assert record["participants"] == [0, 1, 2] and not record["rejected"]
    assert record["aggregate_kept_previous"] is None
    assert 0.0 <= record["centralized_zero_shot_accuracy"] <= 1.0
    assert {"centralized_v2t_r1", "centralized_t2v_median_rank"} <= set(record)
    spent = [r["epsilon"] for r in ledger.read(tmp_path) if r["kind"] == "client"]
    assert len(spent) == 3 and all(e > 0 for e in spent)


def test_videomae_under_dp_sgd_and_secure_aggregation(tmp_path: Path) -> None:
    config = secagg_config(1, **{"pretrain.objective": "videomae", "privacy.enabled": True,
                                 "privacy.noise-multiplier": 1.0, "secagg.enabled": True})
    run(config, tmp_path)
    (record,) = [r for r in rundir.read_metrics(tmp_path) if r["round"] == 1]
    assert record["participants"] == [0, 1, 2] and record["aggregate_kept_previous"] is None
    assert [r["trained"] for r in ledger.read(tmp_path) if r["kind"] == "client"] == [True] * 3


def test_train_command_runs_an_objective(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "contrastive"
    assert cli_main(["train", "--objective", "contrastive", "--epochs", "1", "--train-clips",
                     "16", "--val-clips", "8", "--batch-size", "8", "--threads", "1", "--out",
                     str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "contrastive"
    assert {"zero_shot_accuracy", "v2t_r1", "t2v_r5"} <= set(summary["final_val_metrics"])
    assert json.loads((out / "config.json").read_text())["pretrain"]["objective"] == "contrastive"
    assert cli_main(["train", "--mask-ratio", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "--mask-ratio need --objective" in capsys.readouterr().err
