"""The privacy ledger, `fedmirasol privacy-report` and the ready DP config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedmirasol.cli import main
from fedmirasol.privacy import ledger
from fedmirasol.privacy.report import budget_left_text, epsilon_text, run_summary, worst_client_line



def metrics(epsilon: float, steps: int, exhausted: int = 0) -> dict:
    return {"dp-epsilon": epsilon, "dp-delta": 1e-5, "dp-total-steps": steps,
            "dp-round-steps": 0 if exhausted else 10, "dp-sample-rate": 0.125,
            "dp-noise-multiplier": 1.6, "dp-max-grad-norm": 1.0, "dp-budget": 8.0,
            "dp-budget-exhausted": exhausted}


def write_ledger(run_dir: Path) -> None:
    ledger.append(run_dir, [ledger.client_record(1, 0, metrics(2.0, 10), "rdp"),
                            ledger.client_record(1, 1, metrics(2.5, 10), "rdp")])
    ledger.append(run_dir, [ledger.client_record(2, 0, metrics(3.0, 20), "rdp"),
                            ledger.client_record(2, 1, metrics(7.9, 20), "rdp"),
                            ledger.client_level_record(2, epsilon=1.5, delta=1e-5,
                                                       noise_multiplier=1.0, clip_norm=1.0,
                                                       num_sampled=2, num_clients=2)])
    # a resumed run rewrites round 2 of client 0: the last record counts
    ledger.append(run_dir, [ledger.client_record(2, 0, metrics(3.1, 20), "rdp"),
                            ledger.client_record(3, 1, metrics(7.9, 20, exhausted=1), "rdp")])


def test_ledger_keeps_the_last_record_per_client_and_round(tmp_path):
    write_ledger(tmp_path)
    records = ledger.read(tmp_path)
    assert [(r["round"], r["kind"], r.get("partition-id")) for r in records] == [
        (1, "client", 0), (1, "client", 1), (2, "client", 0), (2, "client", 1),
        (2, "client-level", None), (3, "client", 1)]
    assert records[2]["epsilon"] == 3.1
    assert set(ledger.CLIENT_FIELDS) <= set(records[0])
    with pytest.raises(ValueError):
        ledger.append(tmp_path, [{"kind": "client", "round": 4, "epsilon": float("nan")}])
    with pytest.raises(ValueError, match="client 3"):
        ledger.client_record(1, 3, {"dp-epsilon": 1.0}, "rdp")


def test_summary_per_client_and_worst_client(tmp_path):
    write_ledger(tmp_path)
    summary = run_summary(tmp_path)
    first, second = summary["clients"]
    assert (first["rounds"], first["total-steps"], first["epsilon"]) == (2, 20, 3.1)
    assert first["budget-left"] == pytest.approx(8.0 - 3.1)
    assert second["budget-exhausted"] and second["rounds"] == 2
    assert summary["worst-client"] == {"partition-id": 1, "epsilon": 7.9, "delta": 1e-5}
    assert summary["client-level"]["epsilon"] == 1.5
    assert "worst client 1 at epsilon 7.9" in worst_client_line(tmp_path)
    assert worst_client_line(tmp_path / "nothing") is None


def test_privacy_report_command_prints_table_json_and_writes_the_plot(tmp_path, capsys):
    write_ledger(tmp_path)
    assert main(["privacy-report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "budget left" in table and "exhausted" in table and "client-level DP" in table
    assert main(["privacy-report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["worst-client"]["epsilon"] == 7.9
    plot = Path(report["plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["privacy-report", str(tmp_path / "missing")]) == 2


def test_printed_epsilon_is_rounded_up_and_budget_left_down():
    assert epsilon_text(8.00004) == "8.001"  # never shown as 8 when it is above 8
    assert epsilon_text(7.99996) == "8.000"
    assert epsilon_text(0.123449) == "0.1235"
    assert budget_left_text(0.99996) == "0.9999"
    assert budget_left_text(2.0) == "2.000"


def test_malformed_dp_figures_are_left_out_of_the_ledger_not_crashing_the_round(tmp_path):
    from flwr.app import Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.privacy.server_side import ServerPrivacy

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def reply(metrics):
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), dst_node_id=1,
                       message_type=MessageType.TRAIN)

    good = {"partition-id": 0, "dp-epsilon": 1.5, "dp-total-steps": 10, "dp-sample-rate": 0.1,
            "dp-noise-multiplier": 1.0, "dp-delta": 1e-5}
    from fedmirasol.config import load_config

    config = load_config(None, ["privacy.enabled=true", "data.num-clients=3"])
    server = ServerPrivacy(config, tmp_path, [])
    server.record_clients(1, [reply(good), reply({**good, "partition-id": 1,
                                                  "dp-epsilon": math.nan}),
                              reply({"partition-id": 2, "dp-epsilon": 1.0})])
    records = ledger.read(tmp_path)
    assert [r["partition-id"] for r in records] == [0]
    assert records[0]["max-grad-norm"] is None  # absent, not NaN
    # ... and the updates of the two replies the ledger cannot cover are not aggregated.
    missing = reply({"partition-id": 3, "num-examples": 4})
    accepted, rejected = server.check_reported(
        1, [reply(good), reply({**good, "partition-id": 1, "dp-epsilon": math.nan}), missing],
        {})
    assert len(accepted) == 1 and dict(accepted[0].content.metric_records["metrics"]) == good
    assert [r.reason for r in rejected] == [
        "metric 'dp-epsilon' is nan",
        "the reply carries no DP figures ('dp-epsilon') while privacy.enabled"]
