"""What a user of `fedmirasol simulate` / `flwr run .` sees: a federation of the wrong size
fails in seconds naming both settings, a run that fails before round 1 leaves no run
directory, the progress callback hears of every reply, and a federation too small for the
strategy says so without mentioning privacy when DP is off."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.engines import simulation as simulate_module
from fedmirasol.engines.apps import build_client_app
from fedmirasol.server.nodes import NodeCountMismatch
from fedmirasol.runs.report import ConsoleProgress
from fedmirasol.config import load_config
from fedmirasol.server.loop import FederatedRun
from fedmirasol.engines.simulation import simulate
from fedmirasol.testing.local_grid import LocalGrid

TINY = {"num-rounds": 1, "data.num-clients": 3, "data.clips-per-client": 6,
        "data.test-clips": 4, "model.num-frames": 8, "client.batch-size": 4,
        "client.local-epochs": 1, "client.threads": 1, "strategy.min-train-nodes": 2,
        "strategy.min-available-nodes": 2, "strategy.min-evaluate-nodes": 2,
        "output.plots": False}


def tiny_config(runs: Path, **overrides: object) -> dict:
    settings = TINY | {"output.runs-dir": str(runs)} | overrides
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])


@pytest.mark.slow
def test_a_federation_of_another_size_fails_in_seconds_and_leaves_no_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulation engine runs 2 SuperNodes (Flower's default for `flwr run`) while
    # data.num-clients is 3; the server used to wait 300-600 s for the third.
    original = simulate_module._run_simulation
    monkeypatch.setattr(simulate_module, "_run_simulation",
                        lambda **kwargs: original(**{**kwargs, "num_supernodes": 2}))
    runs = tmp_path / "runs"
    started = time.perf_counter()
    with pytest.raises(NodeCountMismatch) as error:
        simulate(tiny_config(runs), progress=None)
    elapsed = time.perf_counter() - started
    message = str(error.value)
    assert '--federation-config "num-supernodes=3"' in message, message
    assert "data.num-clients" in message and "2 SuperNode(s)" in message, message
    assert elapsed < 90, elapsed  # Ray's start included; the wait itself is ~2 s
    assert list(runs.iterdir()) == []  # the half run directory is gone


@pytest.mark.slow
def test_progress_callback_gets_an_event_per_reply_then_one_record_per_round(
        tmp_path: Path) -> None:
    events: list[dict] = []

    def record(event: dict) -> None:
        events.append(dict(event))

    record.per_reply = True  # type: ignore[attr-defined]
    run_dir = simulate(tiny_config(tmp_path / "runs"), progress=record)
    assert (run_dir / rundir.REPORT_FILE).is_file()
    rounds = [e for e in events if "event" not in e]
    assert [r["round"] for r in rounds] == [0, 1]  # round records unchanged: one per round
    for phase in ("train", "evaluate"):
        mine = [e for e in events if e.get("phase") == phase]
        assert [e["event"] for e in mine] == ["sent", "reply", "reply", "reply"], mine
        assert [e["done"] for e in mine] == [0, 1, 2, 3]
        assert all(e["sampled"] == 3 and e["round"] == 1 for e in mine)
        elapsed = [e["elapsed_s"] for e in mine]
        assert elapsed == sorted(elapsed)
        assert sorted(e["partition"] for e in mine[1:]) == [0, 1, 2]
        assert not any(e["error"] for e in mine[1:])
    # every reply event comes before the round's record
    assert events.index(rounds[1]) == len(events) - 1


def test_console_progress_prints_one_line_per_round_and_occasional_lines_off_a_terminal(
        capsys: pytest.CaptureFixture) -> None:
    progress = ConsoleProgress(plain_every_s=0.0)
    progress({"event": "sent", "round": 1, "phase": "train", "sampled": 3, "done": 0,
              "elapsed_s": 0.0})
    progress({"event": "reply", "round": 1, "phase": "train", "sampled": 3, "done": 1,
              "elapsed_s": 4.2, "node": 7, "partition": 0, "error": False})
    progress({"round": 1, "train_loss": 1.0, "centralized_accuracy": 0.5,
              "federated_accuracy": 0.4, "participants": [0, 1, 2], "sampled": [0, 1, 2],
              "rejected": [], "duration_s": 5.0})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "round   1  train: 1/3 clients replied, 4s"
    assert lines[1].startswith("round   1  train loss 1.0000") and len(lines) == 2
    quiet = ConsoleProgress()  # the default: a plain line at most every 30 s
    quiet({"event": "sent", "round": 1, "phase": "train", "sampled": 3, "done": 0,
           "elapsed_s": 0.0})
    quiet({"event": "reply", "round": 1, "phase": "train", "sampled": 3, "done": 1,
           "elapsed_s": 0.1, "node": 7, "partition": 0, "error": False})
    assert capsys.readouterr().out == ""


def test_too_few_clients_for_the_strategy_says_so_without_privacy_when_dp_is_off(
        tmp_path: Path) -> None:
    # 3 clients, the strategy needs all 3, one does not answer at discovery.
    from flwr.app import MessageType

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = tiny_config(tmp_path / "runs", **{"strategy.min-available-nodes": 3,
                                               "strategy.round-timeout": 5.0})
    grid = LocalGrid(build_client_app(), {node: {"partition-id": i, "num-partitions": 3}
                                          for i, node in enumerate([11, 12, 13])})
    grid.drop([13], MessageType.QUERY)
    run_dir = rundir.create(config.output.runs_dir, config.name)
    rundir.write_config(run_dir, config)
    with pytest.raises(ConfigError) as error:
        FederatedRun(grid, config, run_dir).run()
    message = str(error.value)
    assert "privacy" not in message and "budget" not in message, message
    assert "2 of data.num-clients = 3" in message and "needs 3" in message, message
    assert "strategy.min-train-nodes/min-available-nodes" in message, message
    assert "node 13: no reply" in message, message
