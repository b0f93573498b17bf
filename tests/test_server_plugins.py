"""The server's plug-in points: one aggregator per run from a registry, the reply-filter chain
(plain and masked replies), report.json assembled in one place, fresh-or-resume decided once,
and the process's global `random` state left as it was."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedmirasol.config import load_config, with_values
from fedmirasol.privacy.budget import EXHAUSTED
from fedmirasol.privacy.server_side import ServerPrivacy
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.report import add_to_report, build_report
from fedmirasol.runs.resume import open_run
from fedmirasol.server.aggregators import AGGREGATORS, choose_aggregator
from fedmirasol.server.aggregators.audited import AuditedMean
from fedmirasol.server.aggregators.client_level_dp import ClientLevelDPMean
from fedmirasol.server.aggregators.he import HEMean
from fedmirasol.server.aggregators.compressed import CompressedMean
from fedmirasol.server.aggregators.fltrust import FLTrustMean
from fedmirasol.server.aggregators.mean import StrategyMean
from fedmirasol.server.aggregators.secure import SecureMean
from fedmirasol.server.filters import Screening, masked_check, reply_filters, screen
from fedmirasol.server.loop import _seeded_random

import secagg_app_fixtures as fx
from secagg_app_fixtures import task_identity  # noqa: F401  (autouse fixture)

SHARED = {"w": np.zeros((2, 3), np.float32)}


def test_registry_names_each_aggregator_by_its_name() -> None:
    assert AGGREGATORS == {"strategy": StrategyMean, "client-level-dp": ClientLevelDPMean,
                           "secagg": SecureMean, "he": HEMean,
                           "compressed": CompressedMean, "audited": AuditedMean,
                           "fltrust": FLTrustMean}


@pytest.mark.parametrize("values, outer, inner", [
    ({}, StrategyMean, None),
    ({"privacy.client-level": True}, ClientLevelDPMean, None),
    ({"secagg.enabled": True}, SecureMean, StrategyMean),
    ({"secagg.enabled": True, "privacy.client-level": True}, SecureMean, ClientLevelDPMean),
    ({"compression.codec": "top-k"}, CompressedMean, StrategyMean),
    ({"compression.downlink": "quantize", "privacy.client-level": True}, CompressedMean,
     ClientLevelDPMean),
    ({"strategy.name": "fltrust"}, FLTrustMean, None),
    ({"strategy.name": "fltrust", "compression.codec": "top-k"}, CompressedMean, FLTrustMean),
])
def test_one_aggregator_is_chosen_per_run(values, outer, inner) -> None:
    config = with_values(load_config(None, ["data.num-clients=3"]), values)
    aggregator = choose_aggregator(config, SHARED)
    assert type(aggregator) is outer
    if inner is not None:
        assert type(aggregator.mean) is inner  # how the (secure or decoded) sum moves it


class _Watcher:
    def observe(self, server_round, global_shared, updates) -> None: ...

    def canary_updates(self, server_round, sample_rate) -> list:
        return []


@pytest.mark.parametrize("values, inner", [({}, StrategyMean),
                                           ({"privacy.client-level": True}, ClientLevelDPMean)])
def test_an_audit_observes_the_runs_own_mean(values, inner) -> None:
    config = with_values(load_config(None, ["data.num-clients=3"]), values)
    aggregator = choose_aggregator(config, SHARED, _Watcher())
    assert type(aggregator) is AuditedMean and type(aggregator.inner) is inner
    with pytest.raises(ValueError, match="in the clear"):
        choose_aggregator(with_values(config, {"secagg.enabled": True}), SHARED, _Watcher())


def _reply(metrics: dict, arrays: bool = False) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays:
        from fedmirasol.core.parameters import to_record

        content["arrays"] = to_record(SHARED)
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


DP_FIGURES = {"dp-epsilon": 1.5, "dp-total-steps": 10, "dp-sample-rate": 0.1,
              "dp-noise-multiplier": 1.0, "dp-delta": 1e-5}


def test_masked_replies_pass_the_checks_of_the_chain_that_apply_to_them(tmp_path) -> None:
    config = load_config(None, ["privacy.enabled=true", "data.num-clients=3"])
    privacy = ServerPrivacy(config, tmp_path, [])
    check = masked_check(reply_filters(config, privacy, {"w": (2, 3)}), 1)
    exhausted = {"partition-id": 0, EXHAUSTED: 1, "dp-epsilon": 8.1}
    assert check(_reply(exhausted)) is None  # well-formed "exhausted": zero, weight zero
    assert check(_reply(exhausted, arrays=True)) == \
        "a client out of budget must not send an update"
    assert check(_reply({"partition-id": 1, **DP_FIGURES})) is None
    assert check(_reply({"partition-id": 1, **DP_FIGURES, "dp-epsilon": math.nan})) == \
        "metric 'dp-epsilon' is nan"
    assert check(_reply({"partition-id": 2})) == \
        "the reply carries no DP figures ('dp-epsilon') while privacy.enabled"


def test_the_chain_takes_out_exhausted_clients_before_rejecting_others(tmp_path) -> None:
    config = load_config(None, ["privacy.enabled=true", "data.num-clients=3"])
    privacy = ServerPrivacy(config, tmp_path, [])
    chain = reply_filters(config, privacy, {"w": (2, 3)})
    out = _reply({"partition-id": 0, EXHAUSTED: 1, "dp-epsilon": 8.1})
    bad = _reply({"partition-id": 1, "num-examples": 4}, arrays=True)  # no DP figures
    s = screen(chain, Screening(1, [out, bad], {}, {}, kept=[out, bad]))
    assert s.kept == [] and s.exhausted == [out] and privacy.exhausted == {0}
    assert [r.reason for r in s.rejected] == [
        "the reply carries no DP figures ('dp-epsilon') while privacy.enabled"]


def test_seeded_draw_gives_the_process_its_random_state_back() -> None:
    random.seed(1234)
    state = random.getstate()
    with _seeded_random(7):
        drawn = random.sample(range(100), 5)
    assert random.getstate() == state
    random.seed(7)
    assert drawn == random.sample(range(100), 5)  # the draw is the seeded one


def test_a_run_leaves_the_global_random_state_alone(tmp_path) -> None:
    random.seed(99)
    state = random.getstate()
    fx.run(fx.secagg_config(1, **{"secagg.enabled": False}), tmp_path / "run")
    assert random.getstate() == state


def test_report_json_is_built_by_the_report_module_only(tmp_path) -> None:
    run_dir = tmp_path / "run"
    federated = fx.run(fx.secagg_config(1, **{"secagg.enabled": False}), run_dir)
    report = rundir.read_report(run_dir)
    assert report["discovery_problems"] == [] and report["stopped_early"] is None
    assert report["local_parameters"] == list(federated.split.local)
    assert {k: v for k, v in report.items() if k in build_report(run_dir)} \
        == build_report(run_dir, shared=federated.global_shared)
    added = add_to_report(run_dir, wall_clock_seconds=3.5,
                          baseline={"centralized_baseline_accuracy": 0.5})
    assert added == report | {"wall_clock_seconds": 3.5, "centralized_baseline_accuracy": 0.5}
    assert json.loads((run_dir / rundir.REPORT_FILE).read_text()) == added


def test_fresh_or_resume_is_decided_in_one_place(tmp_path) -> None:
    config = load_config(None, [f"output.runs-dir={json.dumps(str(tmp_path))}"])
    opened = open_run(config)
    assert opened.created and opened.checkpoint is None
    assert rundir.read_config(opened.run_dir) == config
    with pytest.raises(RuntimeError), opened.guard():  # a new run failing before round 1
        raise RuntimeError("failed early")
    assert not opened.run_dir.exists()

    again = open_run(config)
    resumed = open_run(resume=again.run_dir)
    assert not resumed.created and resumed.run_dir == again.run_dir
    assert resumed.config == config and resumed.checkpoint is None
    with pytest.raises(RuntimeError), resumed.guard():  # a resumed directory is kept
        raise RuntimeError("failed")
    assert again.run_dir.is_dir()
    with pytest.raises(ValueError):
        open_run()


class _ReversingGrid:
    """Answers every message at once, the last-sent first (as a fast late client would)."""

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            reply = Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=message)
            replies.append(reply)
        return replies[::-1]


class _ExchangeRun:
    def __init__(self, partitions) -> None:
        from fedmirasol.core.metrics import Traffic

        self.grid, self.timeout, self.partitions = _ReversingGrid(), 5.0, partitions
        self.traffic = Traffic()
        self.ahead = None

    def watch(self, server_round, phase, messages):
        return None

    def check_registered(self, replies) -> None: ...


def test_replies_reach_the_aggregate_in_partition_order_not_arrival_order() -> None:
    # float32 sums depend on their order: arrival order would make two runs of one config
    # end with different models
    partitions = {30: 2, 10: 0, 20: 1}  # node -> partition
    messages = []
    for node in (20, 30, 10):
        message = Message(RecordDict({}), dst_node_id=node, message_type=MessageType.TRAIN)
        messages.append(message)
    run = _ExchangeRun(partitions)
    replies = StrategyMean().exchange(run, 1, "train", messages)
    assert [r.metadata.src_node_id for r in replies] == [10, 20, 30]
    assert set(run.traffic.up) == {10, 20, 30}
