"""The videoqa task in federated rounds: the real ClientApp and FederatedRun over the in-process
Grid. Text scores reach metrics.jsonl (server test set, clients, per client), report.json and
the plots; the text path composes with FedBN, a personal decoder head, DP-SGD and secure
aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest
from secagg_app_fixtures import run as run_federated
from secagg_app_fixtures import secagg_config, task_identity  # noqa: F401  (autouse fixture)

from fedmirasol.config import load_config
from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.server.loop import FederatedRun

TINY_QA = {"task.name": "videoqa", "model.text-weight": 1.0, "data.clips-per-client": 8,
           "data.test-clips": 6, "data.partitioner": "iid"}


def run(run_dir: Path, **settings) -> tuple[FederatedRun, dict, dict]:
    """One round of the three-client tiny federation on the videoqa task."""
    federated = run_federated(secagg_config(1, **(TINY_QA | settings)), run_dir)
    return federated, rundir.read_metrics(run_dir)[-1], rundir.read_report(run_dir)


@pytest.mark.slow
def test_text_scores_reach_the_record_report_and_plots(tmp_path: Path) -> None:
    _, record, report = run(tmp_path / "run")
    assert record["participants"] == [0, 1, 2]
    assert 0 <= record["centralized_exact_match"] <= 1
    assert any(key.startswith("centralized_em_") for key in record)
    assert 0 <= record["federated_exact_match"] <= 1
    for row in record["clients"].values():
        assert "val_exact_match" in row and "val_n_questions" in row
    assert report["final_centralized_text"]["exact_match"] == record["centralized_exact_match"]
    assert set(report["final_client_text"]) == {"0", "1", "2"}
    from fedmirasol.runs.plots import plot_run

    assert (tmp_path / "run" / "plots" / "text_metrics.png") in plot_run(tmp_path / "run")


@pytest.mark.slow
def test_text_path_composes_with_fedbn_personal_head_dp_and_secagg(tmp_path: Path) -> None:
    federated, record, _ = run(
        tmp_path / "run", **{"strategy.name": "fedbn", "personalization.method": "fedper",
                             "personalization.layers": "text-head", "privacy.enabled": True,
                             "privacy.noise-multiplier": 1.0, "secagg.enabled": True,
                             "secagg.min-contributors": 2,
                             "secagg.reconstruction-fraction": 0.6})
    assert record["participants"] == [0, 1, 2] and record["aggregate_kept_previous"] is None
    shared = set(federated.global_shared)
    assert not any(name.startswith("text_decoder.head.") for name in shared)  # personal head
    assert not any(".norm" in name for name in shared)  # FedBN: LayerNorms stay local
    assert any(name.startswith("text_decoder.transformer.") for name in shared)
    assert 0 <= record["centralized_exact_match"] <= 1


def test_videoqa_needs_the_text_decoder_and_known_question_types() -> None:
    with pytest.raises(ConfigError, match="model.text-weight"):
        load_config(None, ["task.name='videoqa'", "model.name='latefusion-tiny'"])
    with pytest.raises(ConfigError, match="task.questions"):
        load_config(None, ["task.name='videoqa'", "task.questions='shape,colour'"])
    config = load_config(Path("simulations/videoqa.toml"), [])
    assert config.task.name == "videoqa" and config.model.mirasol.num_frames == 24
