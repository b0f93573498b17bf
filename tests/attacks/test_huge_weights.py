"""Clients that claim huge weights (example counts).

On the plain path one reply claiming 1e12 examples would be FedAvg's whole result: the reply
filter rejects it by name (real app, real FederatedRun). Under secure aggregation an honest
client's weight is clipped to `strategy.max-num-examples` before masking and the sum field is
sized from that bound, so a client with 70,000 examples and federations with more than 65,536
clips in all aggregate exactly; a malicious client that masks a weight over the bound makes the
round fail by name, never skews it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array

from fedmirasol.runs import run_dir as rundir
from fedmirasol.secagg import protocol
from secagg_app_fixtures import NODES as APP_NODES
from secagg_app_fixtures import alter_replies, local_grid, run, secagg_config
from secagg_standins import NODES, Clients, aggregator, max_error, train_messages

STEP = 1.0 / 2 ** 15


def test_a_plain_reply_claiming_1e12_examples_is_rejected_by_name(tmp_path: Path) -> None:
    grid = local_grid()

    def claim(reply) -> None:  # noqa: ANN001
        reply.content.metric_records["metrics"]["num-examples"] = 1e12

    alter_replies(grid, "train", claim, [APP_NODES[1]])
    run(secagg_config(1, **{"strategy.name": "fedavg"}), tmp_path, grid)
    (round_1,) = [r for r in rundir.read_metrics(tmp_path) if r["round"] == 1]
    assert round_1["participants"] == [0, 2] and round_1["aggregate_kept_previous"] is None
    assert [(r["partition-id"], r["reason"]) for r in round_1["rejected"]] == [
        (1, "num-examples 1e+12 exceeds strategy.max-num-examples = 100000 (one client's weight "
            "is bounded, so it cannot outweigh the others)")]


def test_a_client_with_70000_examples_aggregates_exactly_under_secagg() -> None:
    clients = Clients()
    clients.counts[0] = 70_000
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None and sorted(result.survivors) == NODES
    assert result.weight_sum == sum(clients.counts.values())
    assert max_error(result.mean, clients.mean(list(range(5)))) < STEP


def test_a_large_federation_over_65536_clips_does_not_overflow() -> None:
    clients = Clients()
    clients.counts = {pid: 20_000 + pid for pid in clients.counts}  # 100,010 clips at 16 bits
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    assert result.weight_sum == sum(clients.counts.values()) > 65_536
    assert max_error(result.mean, clients.mean(list(range(5)))) < STEP


def test_an_honest_weight_over_the_bound_is_clipped_before_masking() -> None:
    clients = Clients()
    clients.counts[0] = 70_000
    result = aggregator(max_weight=1_000).run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    clients.counts[0] = 1_000  # what the client masked
    assert result.weight_sum == sum(clients.counts.values())
    assert max_error(result.mean, clients.mean(list(range(5)))) < STEP


def test_a_masked_weight_over_the_bound_fails_the_round_by_name() -> None:
    clients = Clients()

    def inflate(reply) -> None:  # noqa: ANN001 - a malicious client adds to its masked weight
        sums = reply.content.array_records[protocol.MASKED][protocol.SUMS].numpy().copy()
        sums[0] += np.uint64(10 ** 9)
        reply.content.array_records[protocol.MASKED][protocol.SUMS] = Array(sums)

    alter_replies(clients.grid, protocol.MASK, inflate, [NODES[2]])
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.mean is None
    assert "secure sum of 'weight' is" in result.failure
    assert "a client masked a figure beyond the protocol's bounds" in result.failure
