"""`fedmirasol model info` and `fedmirasol train`."""

from __future__ import annotations

import json

import pytest
import torch

from fedmirasol.cli import main
from fedmirasol.models import build_model, get_config
from fedmirasol.training.checkpoint import load_checkpoint


def test_model_info_json_counts_every_parameter(capsys):
    assert main(["model", "info", "tiny", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["parameters"]
    model = build_model(get_config("tiny"))
    assert table["total"] == sum(p.numel() for p in model.parameters())
    assert table["video_encoder"] == sum(p.numel() for p in model.video_encoder.parameters())
    assert {"audio_encoder", "combiner", "autoregressive", "text_decoder", "classifier"} <= set(table)


def test_model_info_names_an_unknown_config(capsys):
    assert main(["model", "info", "huge"]) == 2
    assert "unknown model config 'huge'" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for command in (["model", "info"], ["train"], ["data"], ["simulate"], ["report"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: fedmirasol" in capsys.readouterr().out


def test_train_writes_metrics_and_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([
        "train", "--config", "tiny", "--epochs", "2", "--train-clips", "16", "--val-clips", "8",
        "--batch-size", "8", "--device", "cpu", "--out", str(out),
    ])
    assert code == 0
    assert f"run directory: {out}" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["val"]["accuracy"] <= 1.0 and r["val"]["num_examples"] == 8 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_val_accuracy"] == records[-1]["val"]["accuracy"]
    model, extra = load_checkpoint(out / "final.pt")
    assert extra["epoch"] == 2
    assert model.config == get_config("tiny")


def test_train_without_a_modality_marks_it_missing(tmp_path):
    out = tmp_path / "no-audio"
    assert main([
        "train", "--epochs", "1", "--train-clips", "8", "--val-clips", "8", "--batch-size", "8",
        "--drop-modality", "audio", "--out", str(out),
    ]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["drop_modality"] == "audio"


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["train", "--epochs", "1", "--device", "cuda", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_train_videoqa_reports_the_generated_text_scores(tmp_path, capsys):
    out = tmp_path / "qa"
    assert main([
        "train", "--task", "videoqa", "--questions", "shape,count,caption", "--frames", "8",
        "--text-weight", "1", "--epochs", "1", "--train-clips", "8", "--val-clips", "8",
        "--batch-size", "8", "--num-beams", "2", "--out", str(out),
    ]) == 0
    summary = json.loads((out / "summary.json").read_text())
    scores = summary["final_val_text"]
    assert summary["task"] == "videoqa" and 0.0 <= scores["exact_match"] <= 1.0
    assert set(scores) <= {"exact_match", "em_shape", "em_count", "cider", "bleu4"}
    config = json.loads((out / "config.json").read_text())
    assert config["videoqa"]["questions"] == ["shape", "count", "caption"]
    assert config["videoqa"]["num_beams"] == 2 and config["model"]["num_frames"] == 8
    assert main(["train", "--task", "videoqa", "--model", "latefusion-tiny",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--text-weight 1" in capsys.readouterr().err
    assert main(["train", "--task", "videoqa", "--text-weight", "1", "--questions", "colour",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--questions" in capsys.readouterr().err
