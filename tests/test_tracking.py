"""Experiment tracking and comparing runs, on real short runs (the real ClientApp and server loop
over the in-process Grid, tiny model, 2 clients).

One DP run (DP-SGD and client-level DP) with TensorBoard and MLflow, interrupted in round 3
after its checkpoint of round 2 and resumed in a new process's stead; one plain FedProx run
without trackers. TensorBoard's event files (read with its EventAccumulator) and the MLflow store
(read with MlflowClient) must hold every round of metrics.jsonl, nothing per client that
metrics.jsonl does not, and one run each; `fedmirasol compare` puts the two runs side by side.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.cli import main
from fedmirasol.config import RunConfig, load_config, to_flat, to_table
from fedmirasol.config.sections import TRACKERS as TRACKER_NAMES
from fedmirasol.engines.apps import build_client_app
from fedmirasol.errors import ConfigError
from fedmirasol.privacy import ledger
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.compare import differing_keys, load_runs
from fedmirasol.runs.resume import open_run
from fedmirasol.runs.trackers import TRACKERS, RunTrackers, open_trackers
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.local_grid import LocalGrid

TINY = {"data.num-clients": 2, "data.clips-per-client": 8, "data.test-clips": 4,
        "model.num-frames": 8, "client.batch-size": 4, "client.local-epochs": 1,
        "client.threads": 1, "strategy.min-train-nodes": 2, "strategy.min-available-nodes": 2,
        "strategy.min-evaluate-nodes": 2, "output.plots": False}
DP = {"num-rounds": 4, "output.checkpoint-every": 2, "privacy.enabled": True,
      "privacy.noise-multiplier": 1.0, "privacy.client-level": True,
      "privacy.client-clip-norm": 0.05, "output.trackers": ["tensorboard", "mlflow"]}
PLAIN = {"num-rounds": 2, "strategy.name": "fedprox", "strategy.proximal-mu": 0.01}
# metrics.jsonl key -> the tag TensorBoard and MLflow show it under (README, Experiment tracking)
TAGS = {"centralized_accuracy": "accuracy/centralized", "centralized_loss": "loss/centralized",
        "federated_accuracy": "accuracy/federated", "federated_loss": "loss/federated",
        "train_loss": "loss/train", "bytes_down": "communication/bytes_down",
        "bytes_up": "communication/bytes_up", "duration_s": "time/round_seconds",
        "federated_accuracy_client_mean": "accuracy/federated_client_mean",
        "personal_accuracy_client_mean": "accuracy/personal_client_mean",
        "adapted_accuracy_client_mean": "accuracy/adapted_client_mean",
        "skipped_files": "data/skipped_files"}  # any other number: "round/<key>"


class Interrupted(Exception):
    pass


def config(runs: Path, settings: dict) -> RunConfig:
    values = TINY | settings | {"output.runs-dir": str(runs)}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def grid() -> LocalGrid:
    """The real ClientApp on two nodes (a new one: a restarted federation keeps only what the
    clients saved in their state directories)."""
    return LocalGrid(build_client_app(), {node: {"partition-id": i, "num-partitions": 2,
                                                 # under DP its figures leave in the clear
                                                 "privacy.eval-split": "public"}
                                          for i, node in enumerate([11, 12])})


def interrupt_in_round(server_round: int):  # noqa: ANN201 - a Progress callback
    def progress(record: dict) -> None:
        if record["round"] == server_round:
            raise Interrupted(f"the server died after round {server_round}")
    return progress


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    runs_dir = tmp_path_factory.mktemp("runs")
    dp = open_run(config(runs_dir, DP))
    with pytest.raises(Interrupted):
        FederatedRun(grid(), dp.config, dp.run_dir, interrupt_in_round(3)).run()
    logged_before = [r["round"] for r in rundir.read_metrics(dp.run_dir)]
    assert logged_before == [0, 1, 2, 3]
    resumed = open_run(resume=dp.run_dir)
    assert resumed.checkpoint.server_round == 2  # round 3 is run again
    again = FederatedRun(grid(), resumed.config, dp.run_dir)
    again.resume(resumed.checkpoint)
    again.run()
    plain = open_run(config(runs_dir, PLAIN))
    FederatedRun(grid(), plain.config, plain.run_dir).run()
    return {"dp": dp.run_dir, "plain": plain.run_dir}


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        steps = [event.step for event in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a round shown twice: {steps}"
        scalars[tag] = {event.step: event.value for event in events.Scalars(tag)}
    return scalars


def mlflow_run(run_dir: Path):  # noqa: ANN201 - (MlflowClient, Run)
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking-uri"])
    return client, client.get_run(saved["run-id"])


def mlflow_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """metric -> step -> value; of a round logged twice (run again after the resume), the
    later point."""
    client, run = mlflow_run(run_dir)
    return {key: {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                  key=lambda m: m.timestamp)}
            for key in run.data.metrics}


def count(clients: list | int) -> int:
    """How many clients a record field names (under client-level DP the record keeps counts)."""
    return clients if isinstance(clients, int) else len(clients)


def expected_figures(record: dict) -> dict[str, float]:
    """What a tracker must show of a metrics.jsonl record, spelled out independently."""
    figures = {tag: record[key] for key, tag in TAGS.items() if record.get(key) is not None}
    if record["round"] > 0:
        figures["clients/participants"] = count(record["participants"])
    for pid, row in record.get("clients", {}).items():
        figures.update({f"client/{key}/{pid}": value for key, value in row.items()})
    return figures


def epsilons(run_dir: Path) -> dict[int, tuple[float, float]]:
    """Round -> (the worst client's epsilon so far, client-level epsilon), from the ledger."""
    records = ledger.read(run_dir)
    rounds = sorted({r["round"] for r in records})
    return {rnd: (max(r["epsilon"] for r in records
                      if r["kind"] in ledger.CLIENT_KINDS and r["round"] <= rnd),
                  next(r["epsilon"] for r in records
                       if r["kind"] == "client-level" and r["round"] == rnd))
            for rnd in rounds}


@pytest.mark.slow
def test_tensorboard_holds_every_round_of_metrics_jsonl(runs) -> None:
    shown = tensorboard_scalars(runs["dp"])
    records = rundir.read_metrics(runs["dp"])
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    for record in records:
        for tag, value in expected_figures(record).items():
            assert shown[tag][record["round"]] == pytest.approx(float(np.float32(value)),
                                                                rel=0, abs=0), (tag, record)
    # Round 3 ran twice; TensorBoard shows the second run of it, the one metrics.jsonl holds.
    assert shown["time/round_seconds"][3] == np.float32(records[3]["duration_s"])
    assert sorted(shown["accuracy/federated"]) == [1, 2, 3, 4]
    assert sorted(shown["accuracy/centralized"]) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_tensorboard_shows_the_resolved_config_as_text(runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["dp"] / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = events.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert json.loads(shown) == to_table(rundir.read_config(runs["dp"]))


@pytest.mark.slow
def test_mlflow_holds_every_round_params_and_artifacts_in_one_run(runs) -> None:
    client, run = mlflow_run(runs["dp"])
    assert run.info.status == "FINISHED" and run.info.run_name == runs["dp"].name
    # the resume continued the same MLflow run: the experiment holds one
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params == {k: str(v) for k, v in
                               to_flat(rundir.read_config(runs["dp"])).items()}
    logged = mlflow_scalars(runs["dp"])
    for record in rundir.read_metrics(runs["dp"]):
        for tag, value in expected_figures(record).items():
            assert logged[tag][record["round"]] == value, (tag, record)  # float64: exact
    artifacts = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {name: (runs["dp"] / name).stat().st_size
                         for name in ("final_model.pt", "report.json", "config.json")}


@pytest.mark.slow
@pytest.mark.parametrize("reader", [tensorboard_scalars, mlflow_scalars])
def test_under_dp_trackers_hold_no_figure_metrics_jsonl_does_not(runs, reader) -> None:
    """Every tag is a number of the round's metrics.jsonl record (a per-client one only where
    the record's client row has it), a count of its client lists, or the ledger's epsilon."""
    records = {r["round"]: r for r in rundir.read_metrics(runs["dp"])}
    counts = {"clients/sampled", "clients/participants", "clients/rejected",
              "clients/evaluate_rejected"}
    for tag, by_round in reader(runs["dp"]).items():
        for rnd, value in by_round.items():
            record = records[rnd]
            if tag.startswith("client/"):
                _, key, pid = tag.split("/")
                assert record["clients"][pid][key] == pytest.approx(value, rel=1e-6), tag
            elif tag.startswith("privacy/"):
                assert tag in ("privacy/worst_client_epsilon", "privacy/client_level_epsilon")
            elif tag in counts:
                assert value == count(record[tag.split("/")[1]])
            else:
                key = {t: k for k, t in TAGS.items()}.get(tag) or tag.removeprefix("round/")
                assert record[key] == pytest.approx(value, rel=1e-6), tag


@pytest.mark.slow
def test_epsilon_is_the_ledgers_and_never_shown_below_it(runs) -> None:
    shown, logged = tensorboard_scalars(runs["dp"]), mlflow_scalars(runs["dp"])
    expected = epsilons(runs["dp"])
    assert sorted(expected) == [1, 2, 3, 4]
    for rnd, (worst, level) in expected.items():
        assert logged["privacy/worst_client_epsilon"][rnd] == worst
        assert logged["privacy/client_level_epsilon"][rnd] == level
        for tag, value in (("privacy/worst_client_epsilon", worst),
                           ("privacy/client_level_epsilon", level)):
            # TensorBoard stores float32: rounded up, by at most one float32 step
            assert value <= shown[tag][rnd] <= np.nextafter(np.float32(value), np.inf), tag
    assert worst > expected[1][0]  # it grows over the rounds


@pytest.mark.slow
def test_trackers_are_off_by_default(runs) -> None:
    assert RunConfig().output.trackers == ()
    assert not (runs["plain"] / "tensorboard").exists()
    assert not (runs["plain"] / "mlflow.json").exists()


def test_tracker_names_parse_from_a_list_or_flower_string(tmp_path: Path) -> None:
    listed = config(tmp_path, {"output.trackers": ["mlflow", "tensorboard"]})
    assert listed.output.trackers == ("mlflow", "tensorboard")
    assert to_flat(listed)["output.trackers"] == "mlflow,tensorboard"  # Flower: no lists
    flat = load_config(None, ['output.trackers="tensorboard, mlflow"'])
    assert flat.output.trackers == ("tensorboard", "mlflow")
    with pytest.raises(ConfigError, match=r"output.trackers.*'tensorbord'.*did you mean "
                                          r"'tensorboard'"):
        load_config(None, ['output.trackers=["tensorbord"]'])
    assert set(TRACKER_NAMES) == set(TRACKERS)


@pytest.mark.parametrize("name,module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_tracker_package_is_a_config_error_naming_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, name: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    wanted = config(tmp_path, {"output.trackers": [name]})
    with pytest.raises(ConfigError, match=rf"'{name}'.*pip install -e '\.\[tracking\]'"):
        with open_trackers(wanted, tmp_path, 1):
            pass
    # The command fails before anything starts, and leaves no run directory.
    runs_dir = tmp_path / "runs"
    assert main(["simulate", "--set", f"output.trackers=['{name}']",
                 "--set", f"output.runs-dir='{runs_dir}'"]) == 2
    assert "[tracking]" in capsys.readouterr().err and not runs_dir.exists()


def test_an_mlflow_store_that_cannot_be_opened_names_the_key(tmp_path: Path) -> None:
    wanted = config(tmp_path, {"output.trackers": ["mlflow"],
                               "output.mlflow-uri": "nosuchscheme://x"})
    with pytest.raises(ConfigError, match=r"'output.mlflow-uri' = 'nosuchscheme://x'"):
        with open_trackers(wanted, tmp_path, 1):
            pass
    assert not (tmp_path / "mlflow.json").exists()


def test_a_tracker_that_fails_mid_run_is_switched_off_and_the_run_goes_on(
        tmp_path: Path, caplog) -> None:
    class Broken:
        name, closed = "broken", None

        def log_round(self, step, scalars):  # noqa: ANN001, ANN201
            raise OSError("disk full")

        def close(self, status):  # noqa: ANN001, ANN201
            Broken.closed = status

    trackers = RunTrackers(tmp_path, {"broken": Broken()})
    trackers.log_round({"round": 1, "train_loss": 1.0})
    assert trackers.trackers == {} and Broken.closed == "FAILED"
    assert "broken failed at round 1" in caplog.text and "disk full" in caplog.text


@pytest.mark.slow
def test_compare_writes_the_table_and_the_plot_labelled_by_what_differs(
        runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp" / "compare.png"
    assert main(["compare", str(runs["dp"]), str(runs["plain"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with out.with_suffix(".csv").open() as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    dp, plain = rows[runs["dp"].name], rows[runs["plain"].name]
    # labelled by the keys that differ (not by output.* settings such as the trackers)
    assert dp["label"] == ("num-rounds=4, privacy.client-clip-norm=0.05, privacy.client-level="
                           "true, privacy.enabled=true, strategy.name=fedavg, "
                           "strategy.proximal-mu=0.0")
    assert plain["label"] == ("num-rounds=2, privacy.client-clip-norm=1.0, privacy.client-level="
                              "false, privacy.enabled=false, strategy.name=fedprox, "
                              "strategy.proximal-mu=0.01")
    assert dp["label"] in printed and plain["label"] in printed
    for run_dir, row in ((runs["dp"], dp), (runs["plain"], plain)):
        records = [r for r in rundir.read_metrics(run_dir) if r["round"] > 0]
        assert int(row["rounds"]) == records[-1]["round"]
        assert float(row["final_central_acc"]) == records[-1]["centralized_accuracy"]
        assert float(row["best_central_acc"]) == max(r["centralized_accuracy"] for r in records)
        assert float(row["MB_up"]) == sum(r["bytes_up"] for r in records) / 1e6
    assert float(dp["worst_epsilon"]) == max(worst for worst, _ in epsilons(runs["dp"]).values())
    assert plain["worst_epsilon"] == ""
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert main(["compare", str(runs["dp"]), str(runs["plain"]), "--out", str(out),
                 "--metric", "worst_client_epsilon"]) == 0


@pytest.mark.slow
def test_compare_refuses_an_unknown_metric_and_labels_equal_configs_by_directory(
        runs, capsys) -> None:
    assert main(["compare", str(runs["dp"]), "--metric", "federated_acuracy"]) == 2
    assert "did you mean 'federated_accuracy'" in capsys.readouterr().err
    same = load_runs([runs["plain"], runs["plain"]])
    assert [run.label for run in same] == [runs["plain"].name] * 2
    assert differing_keys([{"output.runs-dir": "a", "seed": 1}, {"output.runs-dir": "b",
                                                                 "seed": 2}]) == ["seed"]
