"""The videoqa task in federated rounds: the real ClientApp and FederatedRun over the in-process
Grid. Text scores reach metrics.jsonl (server test set, clients, per client), report.json and
the plots; the text path composes with FedBN, a personal decoder head, DP-SGD and secure
aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import load_config
from fedmirasol.engines.apps import build_client_app
from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.secagg.identity import provision
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.local_grid import LocalGrid

NODES = [31, 32, 33]
TINY_QA = {"num-rounds": 1, "task.name": "videoqa", "model.text-weight": 1.0,
           "data.num-clients": 3, "data.clips-per-client": 8, "data.test-clips": 6,
           "model.num-frames": 8, "client.batch-size": 4, "client.local-epochs": 1,
           "strategy.round-timeout": 60.0, "data.partitioner": "iid"}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def run(run_dir: Path, **settings) -> tuple[FederatedRun, dict, dict]:
    values = TINY_QA | settings
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, cfg)
    grid = LocalGrid(build_client_app(identities=provision(3)),
                     {node: {"partition-id": i, "num-partitions": 3}
                      for i, node in enumerate(NODES)})
    federated = FederatedRun(grid, cfg, run_dir)
    report = federated.run()
    return federated, rundir.read_metrics(run_dir)[-1], report


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
