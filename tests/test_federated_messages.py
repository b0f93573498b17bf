"""What clients send and what the server accepts and aggregates.

- the aggregate equals the weighted mean of the client updates;
- robust aggregators over deltas match the same aggregators over weights;
- replies with NaN/Inf, wrong shapes or dtypes, missing keys or errors are rejected with a
  reason and never aggregated;
- FedBN clients never send normalization parameters (the test inspects the reply).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from fedmirasol.core.parameters import (
    NORMALIZATION_TYPES,
    ParameterSplit,
    from_record,
    model_state,
    to_record,
)
from fedmirasol.core.reply_checks import ArrayChecks, validate_train_replies
from fedmirasol.config import load_config, to_json
from fedmirasol.server.aggregators.mean import strategy_step as _aggregate
from fedmirasol.task.model import init_model

SHAPES = {"a": (3, 2), "b": (4,)}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    """Messages outside a running app need a task identity (Flower reads it on creation)."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def instruction(node_id: int, content: RecordDict | None = None) -> Message:
    return Message(content=content or RecordDict({"config": ConfigRecord()}),
                   message_type=MessageType.TRAIN, dst_node_id=node_id)


def reply(node_id: int, update: dict[str, np.ndarray], num_examples: float,
          **metrics: float) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in update.items()}),
        "metrics": MetricRecord({"num-examples": num_examples, "partition-id": node_id,
                                 **metrics}),
    })
    return Message(content=content, reply_to=instruction(node_id))


def random_update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def test_fedavg_aggregate_is_the_weighted_mean_of_updates() -> None:
    rng = np.random.default_rng(0)
    global_shared = random_update(rng)
    updates = [random_update(rng) for _ in range(3)]
    weights = [10, 30, 60]
    replies = [reply(i, u, w) for i, (u, w) in enumerate(zip(updates, weights))]
    accepted, rejected = validate_train_replies(replies, SHAPES, {i: i for i in range(3)})
    assert len(accepted) == 3 and not rejected
    new, reason = _aggregate(FedAvg(), 1, accepted, global_shared)
    assert reason is None
    for key in SHAPES:
        expected = global_shared[key] + sum(w * u[key] for u, w in zip(updates, weights)) / 100
        np.testing.assert_allclose(new[key], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", [FedMedian(), FedTrimmedAvg(beta=0.2)])
def test_robust_aggregation_of_deltas_matches_aggregation_of_weights(strategy) -> None:
    rng = np.random.default_rng(1)
    global_shared = random_update(rng)
    updates = [random_update(rng) for _ in range(5)]
    updates[0] = {k: v * 100 for k, v in updates[0].items()}  # an outlier
    replies = [reply(i, u, 1) for i, u in enumerate(updates)]
    new, reason = _aggregate(strategy, 1, replies, global_shared)
    assert reason is None
    stacked = {k: np.stack([global_shared[k] + u[k] for u in updates]) for k in SHAPES}
    if isinstance(strategy, FedMedian):
        expected = {k: np.median(v, axis=0) for k, v in stacked.items()}
    else:  # drop the lowest and the highest of five, average the rest
        expected = {k: np.sort(v, axis=0)[1:4].mean(axis=0) for k, v in stacked.items()}
    for key in SHAPES:
        np.testing.assert_allclose(new[key], expected[key], rtol=1e-5, atol=1e-5)
        assert np.abs(new[key]).max() < 10  # the outlier did not get through


@pytest.mark.parametrize("bad, reason", [
    ({"a": np.full((3, 2), np.nan, np.float32)}, "NaN/Inf"),
    ({"a": np.full((3, 2), np.inf, np.float32)}, "NaN/Inf"),
    ({"a": np.zeros((2, 3), np.float32)}, "shape"),
    ({"a": np.zeros((3, 2), np.float64)}, "dtype"),
    ({"a": None}, "lacks"),
    ({"c": np.zeros(1, np.float32)}, "unexpected"),
    ({"a": "truncated"}, "cannot be decoded"),  # the right shape and dtype, 4 bytes short
])
@pytest.mark.parametrize("checked_ahead", [False, True])
def test_bad_updates_are_rejected_with_a_reason(bad: dict, reason: str,
                                                checked_ahead: bool) -> None:
    rng = np.random.default_rng(2)
    good = random_update(rng)
    update = dict(good)
    for key, value in bad.items():
        if value is None:
            update.pop(key)
        else:
            update[key] = value
    truncated = [key for key, value in update.items() if isinstance(value, str)]
    for key in truncated:
        update[key] = good[key]
    replies = [reply(0, good, 5), reply(1, update, 5)]
    for key in truncated:  # a malicious client's bytes: the npy data cut short
        whole = replies[1].content["arrays"][key]
        replies[1].content["arrays"][key] = Array(dtype=whole.dtype, shape=whole.shape,
                                                  stype=whole.stype, data=whole.data[:-4])
    ahead = ArrayChecks(SHAPES) if checked_ahead else None
    for message in replies if ahead is not None else ():  # as the replies arrive
        ahead.check(message.content)
    accepted, rejected = validate_train_replies(replies, SHAPES, {0: 0, 1: 1}, ahead=ahead)
    assert [m.metadata.src_node_id for m in accepted] == [0]
    assert len(rejected) == 1 and rejected[0].partition_id == 1
    assert reason in rejected[0].reason
    global_shared = random_update(rng)
    new, why = _aggregate(FedAvg(), 1, accepted, global_shared)
    assert why is None and all(np.isfinite(v).all() for v in new.values())
    np.testing.assert_allclose(new["a"], global_shared["a"] + good["a"], rtol=1e-6)


@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(proximal_mu=0.1)])
def test_the_mean_of_updates_decoded_on_arrival_has_the_bits_of_flowers_fedavg(strategy
                                                                              ) -> None:
    """FedAvg's aggregate from the updates the checks decoded as the replies arrived is the
    one Flower's strategy computes from the replies, bit for bit (a run's model does not
    depend on which of the two made it)."""
    rng = np.random.default_rng(4)
    global_shared = random_update(rng)
    replies = [reply(i, random_update(rng), int(n)) for i, n in enumerate((7, 20, 3, 11))]
    ahead = ArrayChecks(SHAPES)
    for message in replies:
        ahead.check(message.content)
    accepted, _ = validate_train_replies(replies, SHAPES, {i: i for i in range(4)}, ahead=ahead)
    assert all(ahead.decoded(m.content.array_records["arrays"]) is not None for m in accepted)
    fast, why = _aggregate(strategy, 1, accepted, global_shared, ahead)
    flower, why_flower = _aggregate(strategy, 1, accepted, global_shared)
    assert why is None and why_flower is None
    for key in SHAPES:
        assert fast[key].dtype == flower[key].dtype
        assert fast[key].tobytes() == flower[key].tobytes()
    ahead.clear()  # nothing kept: Flower's strategy decodes them
    again, _ = _aggregate(strategy, 1, accepted, global_shared, ahead)
    assert all(again[key].tobytes() == flower[key].tobytes() for key in SHAPES)


def test_decoded_updates_are_kept_up_to_a_bound() -> None:
    rng = np.random.default_rng(5)
    replies = [reply(i, random_update(rng), 5) for i in range(3)]
    one = sum(np.zeros(shape, np.float32).nbytes for shape in SHAPES.values())
    ahead = ArrayChecks(SHAPES, keep_bytes=2 * one)
    for message in replies:
        ahead.check(message.content)
    records = [m.content.array_records["arrays"] for m in replies]
    assert [ahead.decoded(r) is not None for r in records] == [True, True, False]
    assert all(ahead.problem(r) is None for r in records)


def test_an_update_replaced_after_its_early_check_is_checked_again() -> None:
    """The checks done as a reply arrives serve only the arrays they saw: a reply whose
    update was replaced since (e.g. a compressed update decoded) is checked afresh."""
    rng = np.random.default_rng(3)
    message = reply(0, random_update(rng), 5)
    ahead = ArrayChecks(SHAPES)
    ahead.check(message.content)  # fine when it arrived
    message.content["arrays"] = ArrayRecord({k: Array(np.full(s, np.nan, np.float32))
                                             for k, s in SHAPES.items()})
    accepted, rejected = validate_train_replies([message], SHAPES, {0: 0}, ahead=ahead)
    assert not accepted and "NaN/Inf" in rejected[0].reason


def test_error_replies_and_bad_metrics_are_rejected() -> None:
    rng = np.random.default_rng(3)
    failed = Message(Error(code=0, reason="client exploded"), reply_to=instruction(7))
    no_examples = reply(8, random_update(rng), 0)
    nan_metric = reply(9, random_update(rng), 3, **{"train-loss": math.nan})
    accepted, rejected = validate_train_replies([failed, no_examples, nan_metric], SHAPES,
                                                {7: 0, 8: 1, 9: 2})
    assert not accepted
    reasons = {r.partition_id: r.reason for r in rejected}
    assert "client exploded" in reasons[0]
    assert "num-examples" in reasons[1]
    assert "train-loss" in reasons[2]


def test_no_accepted_update_keeps_the_global_model() -> None:
    global_shared = random_update(np.random.default_rng(4))
    new, reason = _aggregate(FedAvg(), 1, [], global_shared)
    assert new is global_shared and reason == "no accepted updates"


def tiny_config(**overrides: object):
    base = ["data.num-clients=2", "data.clips-per-client=6", "data.test-clips=4",
            "model.num-frames=8", "client.batch-size=4"]
    return load_config(None, base + [f"{k}={v}" for k, v in overrides.items()])


def train_message(config, server_round: int = 1, arrays: ArrayRecord | None = None,
                  **extra: object) -> Message:
    model = init_model(config)
    split = ParameterSplit.from_model(model, "normalization"
                                      if config.strategy.name == "fedbn" else "")
    if arrays is None:
        arrays = to_record(model_state(model, split.shared))
    record = ConfigRecord({client_handlers.CONFIG_KEY: to_json(config),
                           "server-round": server_round, **extra})
    return instruction(5, RecordDict({"arrays": arrays, "config": record}))


def client_context(partition_id: int = 0, num_partitions: int = 2) -> Context:
    return Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                   node_config={"partition-id": partition_id, "num-partitions": num_partitions})


def test_fedbn_client_never_sends_normalization_parameters() -> None:
    config = tiny_config(**{"strategy.name": "fedbn"})
    model = init_model(config)
    norm_keys = {f"{name}.{p}" for name, module in model.named_modules()
                 if isinstance(module, NORMALIZATION_TYPES) for p, _ in
                 module.named_parameters(recurse=False)}
    assert norm_keys and all(isinstance(m, torch.nn.LayerNorm) or True for m in [model])
    message = train_message(config)
    assert not norm_keys & set(message.content.array_records["arrays"])  # server sends none
    context = client_context()
    answer = client_handlers.handle_train(message, context)
    sent = answer.content.array_records["arrays"]
    assert set(sent) and not norm_keys & set(sent)  # the client sends none back
    assert all(array.numpy().dtype == np.float32 for array in sent.values())
    kept = from_record(context.state.array_records["local-params"])
    assert set(kept) == norm_keys  # they persist in the client's state instead
    # After local training, the kept normalization weights differ from their initial ones.
    initial = model_state(model, sorted(norm_keys))
    assert any(not np.allclose(kept[k], initial[k]) for k in norm_keys)


def test_fedavg_client_sends_every_float_parameter_as_a_delta() -> None:
    config = tiny_config()
    message = train_message(config)
    sent_global = from_record(message.content.array_records["arrays"])
    answer = client_handlers.handle_train(message, client_context(partition_id=1))
    update = from_record(answer.content.array_records["arrays"])
    assert set(update) == set(sent_global)
    assert answer.content.metric_records["metrics"]["partition-id"] == 1
    assert answer.content.metric_records["metrics"]["num-examples"] > 0
    # A delta, not weights: small next to the weights themselves.
    norm = math.sqrt(sum(float((v ** 2).sum()) for v in update.values()))
    weights = math.sqrt(sum(float((v ** 2).sum()) for v in sent_global.values()))
    assert 0 < norm < 0.5 * weights


def test_client_names_a_partition_mismatch() -> None:
    config = tiny_config()
    with pytest.raises(ValueError, match="num-clients"):
        client_handlers.handle_train(train_message(config), client_context(0, num_partitions=5))


def test_a_node_the_superlink_answers_for_is_named_once() -> None:
    """An unavailable node's error reply comes from the SuperLink (node id 1), in reply to the
    message: it is the sampled node that is rejected, once, and not also counted as silent."""
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    from fedmirasol.server.exchange import destinations as _destinations, missing as _missing

    sent = [instruction(7), instruction(8)]
    for number, message in enumerate(sent):
        message.metadata.__dict__["_message_id"] = f"id-{number}"  # as a Grid sets it on push
    unavailable = create_message_error_unavailable_res_message(sent[1].metadata, "node_unavail")
    assert unavailable.metadata.src_node_id != 8
    replies = [reply(7, random_update(np.random.default_rng(0)), 4.0), unavailable]
    _, rejected = validate_train_replies(replies, SHAPES, {7: 0, 8: 1}, _destinations(sent))
    assert [(r.node_id, r.partition_id) for r in rejected] == [(8, 1)]
    assert "Node Unavailable" in rejected[0].reason
    assert _missing(sent, replies, {7: 0, 8: 1}, 60.0) == []
