"""Secure aggregation's protocol over an in-process Grid, with stand-in training.

- the secure mean equals the plain weighted mean within quantization error;
- no message the server receives holds an individual update in the clear;
- clients that vanish after key sharing leave the exact mean of the survivors;
- too many dropouts fail the round with a clear reason (a later round still works);
- values outside the quantization range are reported, never clipped.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from flwr.app import Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.core.seeds import seed_for
from fedmirasol.secagg import client, protocol
from fedmirasol.secagg.quantization import CapacityExceeded, OutOfRange, Quantizer
from secagg_app_fixtures import alter_replies
from secagg_standins import NODES, Clients, aggregator, max_error, train_messages



@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.parametrize("bound,weighting,neighbours", [
    (1.0, "examples", 0), (0.5, "examples", 0), (1.0, "equal", 4)])
def test_secure_mean_equals_plain_mean(bound: float, weighting: str,
                                       neighbours: int) -> None:
    clients = Clients()
    result = aggregator(bound, weighting, num_neighbours=neighbours).run(
        clients.grid, train_messages(), 10, 1)
    assert result.failure is None and not result.rejections
    assert sorted(result.survivors) == NODES
    step = bound / 2 ** 15  # one quantization step
    assert max_error(result.mean, clients.mean(list(range(5)), weighting == "examples")) < step
    assert result.weight_sum == (sum(clients.counts.values()) if weighting == "examples" else 5)
    # the contributor count and the (weighted, as on the plain path) train loss are secure sums
    assert result.contributors == 5
    weights = [clients.counts[p] if weighting == "examples" else 1 for p in range(5)]
    assert result.train_loss == pytest.approx(
        np.average(list(clients.losses.values()), weights=weights), abs=1e-4)


def test_secure_evaluation_sums_equal_the_plain_means() -> None:
    clients = Clients()
    clients.grid.drop([NODES[3]], protocol.EVAL_MASK)  # a dropout while evaluating
    messages = [Message(m.content, dst_node_id=m.metadata.dst_node_id,
                        message_type=MessageType.EVALUATE, group_id="1")
                for m in train_messages()]
    result = aggregator(max_weight=8).evaluate(clients.grid, messages, 10, 1, (
        ("val-loss", protocol.LOSS_CAP), ("val-accuracy", 1.0), ("personal-accuracy", 1.0)))
    assert result.failure is None and result.mean is None  # figures only, no update
    pids = [0, 1, 2, 4]
    weights = [min(clients.counts[p], 8) for p in pids]  # example counts clipped to the bound
    sums = result.sums
    assert sums.contributors == 4 and sums.weight == sum(weights)
    for name, values in (("val-loss", clients.losses), ("val-accuracy", clients.accuracies)):
        assert sums.weighted_mean(name) == pytest.approx(
            np.average([values[p] for p in pids], weights=weights), abs=1e-4)
        assert sums.mean(name) == pytest.approx(np.mean([values[p] for p in pids]), abs=1e-4)
    assert sums.mean("personal-accuracy") is None  # nobody reported it


def test_server_never_receives_an_individual_update() -> None:
    clients = Clients()
    result = aggregator(1.0).run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    quantizer = Quantizer(1.0, 16)
    stages = {m.metadata.message_type for m in clients.received}
    assert stages == {protocol.KEYS, protocol.SHARES, protocol.MASK, protocol.CONSISTENCY,
                      protocol.UNMASK}
    for message in clients.received:
        assert "arrays" not in message.content.array_records  # no plain update record
        payload = b"".join(a.data for r in message.content.array_records.values()
                           for a in r.values())
        for record in message.content.config_records.values():
            payload += b"".join(v if isinstance(v, bytes) else b"".join(
                x for x in v if isinstance(x, bytes)) if isinstance(v, (bytes, list)) else b""
                for v in record.values())
        for pid, update in clients.updates.items():  # neither the floats nor the integers
            plain = np.zeros(sum(v.size for v in update.values()), np.uint32)
            rounding = seed_for(0, 1, pid, client.ROUNDING_STREAM)  # the client's own rounding
            quantizer.encode(list(update.values()), clients.counts[pid], plain,
                             np.random.default_rng(rounding))
            assert plain.tobytes()[:64] not in payload
            for values in update.values():
                assert values.tobytes()[:64] not in payload
        if message.metadata.message_type == protocol.MASK:
            masked = message.content.array_records[protocol.MASKED][protocol.VECTOR].numpy()
            pid = int(message.content.metric_records["metrics"]["partition-id"])
            flat = np.concatenate([v.ravel() for v in clients.updates[pid].values()])
            # A masked vector looks uniform on its field and is uncorrelated with the update.
            signed = masked.view(np.int64 if masked.dtype == np.uint64 else np.int32)
            signed = signed.astype(np.float64) / 2.0 ** (8 * masked.itemsize - 32)
            assert np.abs(signed).mean() > 2 ** 29
            assert abs(np.corrcoef(signed, flat)[0, 1]) < 0.15


@pytest.mark.parametrize("bound,stage", [(1.0, protocol.MASK), (0.5, protocol.MASK)])
def test_dropouts_after_key_sharing_leave_the_survivors_sum(bound: float, stage: str) -> None:
    clients = Clients()
    clients.grid.drop([NODES[1], NODES[3]], stage)  # n - t = 2
    result = aggregator(bound).run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    assert sorted(result.survivors) == [NODES[0], NODES[2], NODES[4]]
    assert {r.node_id for r in result.rejections} == {NODES[1], NODES[3]}
    assert max_error(result.mean, clients.mean([0, 2, 4])) < bound / 2 ** 15
    assert result.weight_sum == clients.counts[0] + clients.counts[2] + clients.counts[4]


def test_secagg_plus_neighbour_groups_check_only_their_neighbourhoods() -> None:
    """Ten clients on a ring of 4 neighbours (share groups of 5, threshold 3), two dropped
    after masking: the exact survivors' mean; each client's unmask request carries only the
    signatures of the share groups it holds shares of (its two-hop neighbourhood), not all."""
    nodes = list(range(201, 211))
    clients = Clients(nodes=nodes)
    clients.grid.drop([nodes[2], nodes[7]], protocol.MASK)
    sent: list[Message] = []
    original = clients.grid.send_and_receive

    def spy(messages, timeout=None):  # noqa: ANN001, ANN202
        messages = list(messages)
        sent.extend(m for m in messages if m.metadata.message_type == protocol.UNMASK)
        return original(messages, timeout=timeout)

    clients.grid.send_and_receive = spy
    result = aggregator(num_neighbours=4).run(clients.grid, train_messages(nodes=nodes), 10, 1)
    assert result.failure is None, result.failure
    survivors = [p for p in range(10) if p not in (2, 7)]
    assert max_error(result.mean, clients.mean(survivors)) < 1.0 / 2 ** 15
    assert len(sent) == 8  # a two-hop neighbourhood is 9 of the 10 nodes: 7 of the 8 survivors
    assert all(len(m.content.config_records[protocol.RECORD]["signers"]) == 7 for m in sent)


def test_a_dropout_while_unmasking_is_tolerated() -> None:
    clients = Clients()
    clients.grid.drop([NODES[0]], protocol.UNMASK)
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None and sorted(result.survivors) == NODES  # its input counts
    assert max_error(result.mean, clients.mean(list(range(5)))) < 1.0 / 2 ** 15


def test_too_many_dropouts_fail_the_round_and_the_next_round_runs() -> None:
    clients = Clients()
    clients.grid.drop(NODES[:3], protocol.MASK, group_id="1")  # 3 > n - t = 2
    secure = aggregator()
    failed = secure.run(clients.grid, train_messages(1), 10, 1)
    assert failed.mean is None
    assert "too many clients dropped after masking: 2 left" in failed.failure
    assert "threshold 3" in failed.failure
    again = secure.run(clients.grid, train_messages(2), 10, 2)
    assert again.failure is None and sorted(again.survivors) == NODES


def test_an_update_outside_the_range_is_reported_not_clipped() -> None:
    clients = Clients()
    clients.updates[2]["b"][7] = 3.0  # outside +-1
    result = aggregator(1.0).run(clients.grid, train_messages(), 10, 1)
    reasons = [r.reason for r in result.rejections]
    assert len(reasons) == 1 and "OutOfRange" in reasons[0] and "+-1" in reasons[0]
    assert "largest |value| 3" in reasons[0]
    assert NODES[2] not in result.survivors  # not silently clamped into the sum
    assert max_error(result.mean, clients.mean([0, 1, 3, 4])) < 1.0 / 2 ** 15
    with pytest.raises(OutOfRange, match="1 update value"):
        Quantizer(1.0, 16).encode([np.array([0.5, -1.5], np.float32)], 1,
                                  np.zeros(2, np.uint32), np.random.default_rng(0))
    with pytest.raises(OutOfRange):  # NaN is out of any range
        Quantizer(1.0, 16).check_range([np.array([np.nan], np.float32)])


def test_a_sum_that_could_wrap_is_refused_naming_the_cause() -> None:
    Quantizer(1.0, 16).check_capacity(weight_sum=65535 - 10, num_clients=10)
    with pytest.raises(CapacityExceeded, match="total weight 65536 over 10 clients needs 32.0 "
                       "bits but the field has 32.*strategy.max-num-examples"):
        Quantizer(1.0, 16).check_capacity(weight_sum=65536, num_clients=10)
    Quantizer(1.0, 16, 64).check_capacity(weight_sum=2 ** 40, num_clients=10)


def test_clients_refuse_to_unmask_both_ways() -> None:
    clients = Clients()
    secure = aggregator()
    grid = clients.grid
    sent: list[Message] = []
    original = grid.send_and_receive

    def tamper(messages, timeout=None):  # noqa: ANN001, ANN202 - a server naming a survivor dropped
        messages = list(messages)
        for message in messages:
            if message.metadata.message_type == protocol.UNMASK:
                record = message.content.config_records[protocol.RECORD]
                record["dropped"] = [NODES[0]]
                sent.append(message)
        return original(messages, timeout=timeout)

    grid.send_and_receive = tamper
    result = secure.run(grid, train_messages(), 10, 1)
    assert sent and result.mean is None
    assert result.rejections and all("refused: the server named nodes both surviving and "
                                     "dropped" in r.reason for r in result.rejections)


def replace_shares(change: Callable[[bytes], bytes]) -> Callable[[Message], None]:
    """An edit for `alter_replies` that replaces every revealed share by `change(share)`."""

    def edit(reply: Message) -> None:
        record = reply.content.config_records[protocol.RECORD]
        record["shares"] = [change(share) for share in record["shares"]]

    return edit


def test_a_malformed_stage_reply_is_named_not_fatal() -> None:
    clients = Clients()  # one client answers the key stage without its keys
    alter_replies(clients.grid, protocol.KEYS,
                  lambda reply: reply.content.config_records.pop(protocol.RECORD), [NODES[2]])
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None and sorted(result.survivors) == NODES[:2] + NODES[3:]
    assert [(r.node_id, r.reason) for r in result.rejections] == [
        (NODES[2], "secagg_keys: reply carries neither keys nor bookkeeping")]


def test_shares_that_do_not_combine_fail_the_round_not_the_run() -> None:
    clients = Clients()  # every share revealed is garbage
    alter_replies(clients.grid, protocol.UNMASK, replace_shares(lambda share: b"garbage"))
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.mean is None
    assert result.failure.startswith("secure aggregation failed: the shares revealed for client")


def tamper_shares(grid, holders: list[int]) -> None:  # noqa: ANN001
    """`holders` reveal well-formed but wrong shares: a bit of the first chunk flipped, after
    the 4-byte index, so they still combine (padding intact) into a wrong secret."""
    alter_replies(grid, protocol.UNMASK,
                  replace_shares(lambda share: share[:4] + bytes([share[4] ^ 1]) + share[5:]),
                  holders)


@pytest.mark.parametrize("dropped", [[], [NODES[4]]], ids=["survivor-seeds", "dropout-key"])
def test_a_wrong_share_is_caught_by_the_commitment_and_left_out(dropped: list[int]) -> None:
    clients = Clients()
    clients.grid.drop(dropped, protocol.MASK)
    tamper_shares(clients.grid, [NODES[1]])
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    survivors = [p for p, n in enumerate(NODES) if n not in dropped]
    assert max_error(result.mean, clients.mean(survivors)) < 1.0 / 2 ** 15  # the right sum
    wrong = [r for r in result.rejections if r.node_id == NODES[1]]
    assert wrong and all("does not fit its commitment" in r.reason for r in wrong)
    if dropped:
        assert any("client %d's mask key" % NODES[4] in r.reason for r in wrong)


def test_too_few_fitting_shares_fail_the_round_by_name() -> None:
    clients = Clients()
    tamper_shares(clients.grid, NODES[:3])  # 2 honest shares < threshold 3
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.mean is None
    assert "do not rebuild the self-mask seed it committed to" in result.failure


@pytest.mark.parametrize("stage,edit,reason", [
    (protocol.SHARES, lambda reply: reply.content.config_records[protocol.RECORD].__setitem__(
        "dst", 5), "secagg_shares: reply's 'dst' is not a list of integers"),
    (protocol.UNMASK, lambda reply: reply.content.config_records[protocol.RECORD].__setitem__(
        "nodes", ["x"]), "secagg_unmask: reply's 'nodes' is not a list of integers"),
    (protocol.UNMASK, lambda reply: reply.content.config_records[protocol.RECORD].__setitem__(
        "shares", []), "secagg_unmask: reply's lists differ in length"),
], ids=["shares-dst", "unmask-nodes", "unmask-lengths"])
def test_a_reply_of_the_wrong_kind_is_named_and_the_sum_stays_right(stage, edit, reason) -> None:
    clients = Clients()
    alter_replies(clients.grid, stage, edit, [NODES[1]])
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    assert [(r.node_id, r.reason) for r in result.rejections] == [(NODES[1], reason)]
    survivors = list(range(5)) if stage == protocol.UNMASK else [0, 2, 3, 4]
    assert max_error(result.mean, clients.mean(survivors)) < 1.0 / 2 ** 15


def test_a_holder_naming_a_client_twice_is_named_once() -> None:
    def repeat(reply: Message) -> None:
        record = reply.content.config_records[protocol.RECORD]
        record["nodes"], record["shares"] = record["nodes"] * 2, record["shares"] * 2

    clients = Clients()
    alter_replies(clients.grid, protocol.UNMASK, repeat, [NODES[1]])
    result = aggregator().run(clients.grid, train_messages(), 10, 1)
    assert result.failure is None
    assert [r.node_id for r in result.rejections] == [NODES[1]]
    assert max_error(result.mean, clients.mean(list(range(5)))) < 1.0 / 2 ** 15
