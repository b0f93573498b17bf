"""Personalization: what clients send and keep, and what each method trains.

- FedPer's personal layers never leave the client (the test inspects the reply) and persist in
  its state from round to round;
- FedRep trains the personal head first (body frozen), then the shared body (head frozen);
- Ditto's personal model differs from the global one, is pulled towards it by lambda and does
  not leak into the update the client sends;
- local adaptation is evaluated on a copy of the received model; Reptile and Per-FedAvg train;
- under DP every method trains with every pass over the data accounted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from fedmirasol.client import task as client_task
from fedmirasol.core.parameters import ParameterSplit, from_record, model_state, to_record
from fedmirasol.config import load_config, to_json
from fedmirasol.personalization import fedrep
from fedmirasol.personalization.ditto import load_personal_model

BASE = ["data.num-clients=2", "data.clips-per-client=12", "data.test-clips=4",
        "model.num-frames=8", "client.batch-size=4", "data.partitioner='pathological'",
        "data.classes-per-client=2"]
HEAD = {"classifier.0.weight", "classifier.0.bias", "classifier.1.weight", "classifier.1.bias"}


@pytest.fixture(autouse=True)
def single_thread_and_identity() -> None:
    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def config(*overrides: str) -> dict:
    return load_config(None, BASE + list(overrides))


def global_model(cfg: dict) -> tuple[dict, ParameterSplit]:
    model = client_task.init_model(cfg)
    split = ParameterSplit.from_model(model, cfg.local_selectors())
    return model_state(model, split.shared), split


def train_message(cfg: dict, server_round: int, shared: dict) -> Message:
    record = ConfigRecord({client_handlers.CONFIG_KEY: to_json(cfg), "server-round": server_round})
    return Message(content=RecordDict({"arrays": to_record(shared), "config": record}),
                   message_type=MessageType.TRAIN, dst_node_id=5)


def distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(((a[k].astype(np.float64) - b[k]) ** 2).sum() for k in b)))


def test_layer_presets_and_patterns_become_local_parameters() -> None:
    cfg = config("personalization.method='fedper'", "personalization.layers='head,text-head'")
    assert cfg.local_selectors() == "classifier.*,text_decoder.head.*"
    _, split = global_model(cfg)
    assert HEAD | {"text_decoder.head.weight", "text_decoder.head.bias"} <= set(split.local)
    assert not set(split.local) & set(split.shared)
    # Personal layers combine with FedBN's normalization layers; methods without personal
    # layers keep everything shared.
    fedbn = config("personalization.method='fedrep'", "strategy.name='fedbn'")
    assert fedbn.local_selectors() == "normalization,classifier.*"
    assert config("personalization.method='ditto'").local_selectors() == ""
    with pytest.raises(ValueError, match="matches no parameter"):
        global_model(config("personalization.method='fedper'", "personalization.layers='nope.*'"))


def test_fedper_personal_layers_never_leave_the_client_and_persist_across_rounds() -> None:
    cfg = config("personalization.method='fedper'")
    shared, split = global_model(cfg)
    assert set(split.local) == HEAD
    initial_head = model_state(client_task.init_model(cfg), sorted(HEAD))
    context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 2})
    answer = client_handlers.handle_train(train_message(cfg, 1, shared), context)
    sent = set(answer.content.array_records["arrays"])
    assert sent == set(shared) and not sent & HEAD  # the head is neither sent nor received
    after_round_1 = from_record(context.state.array_records["local-params"])
    assert set(after_round_1) == HEAD
    assert distance(after_round_1, initial_head) > 0  # trained locally

    # Round 2 starts from the kept head: with a vanishing learning rate it stays where round 1
    # left it (not at the initial one); an evaluation reads the same kept head.
    still = config("personalization.method='fedper'", "client.optimizer='sgd'",
                   "client.lr=1e-12", "client.momentum=0.0")
    client_handlers.handle_train(train_message(still, 2, shared), context)
    after_round_2 = from_record(context.state.array_records["local-params"])
    assert distance(after_round_2, after_round_1) < 1e-6 < distance(after_round_2, initial_head)
    metrics = client_task.evaluate_local(cfg, 0, shared, context.state)
    assert metrics["personal-accuracy"] == metrics["val-accuracy"]


def test_fedrep_trains_the_head_then_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    phases = []
    original = client_task.train_epochs

    def recording(model, loader, optimizer, **kwargs):
        before = model_state(model, [n for n, _ in model.named_parameters()])
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
        result = original(model, loader, optimizer, **kwargs)
        after = model_state(model, [n for n, _ in model.named_parameters()])
        changed = {n for n in before if not np.array_equal(before[n], after[n])}
        phases.append((trainable, changed, kwargs["epochs"]))
        return result

    monkeypatch.setattr(client_task, "train_epochs", recording)
    cfg = config("personalization.method='fedrep'", "personalization.head-epochs=2",
                 "personalization.body-epochs=1")
    shared, _ = global_model(cfg)
    result = client_task.train(cfg, 0, 1, shared, RecordDict())
    (head_trainable, head_changed, head_epochs), (body_trainable, body_changed, body_epochs) = phases
    assert (head_epochs, body_epochs) == (2, 1)
    assert head_trainable == HEAD and head_changed <= HEAD and head_changed
    parameters = {n for n, _ in client_task.init_model(cfg).named_parameters()}
    assert body_trainable == parameters - HEAD and body_changed <= set(shared) and body_changed
    assert result.metrics["head-steps"] == 2 * result.metrics["body-steps"] > 0
    assert set(result.update) == set(shared)
    # The cached model's flags come back: everything trainable again.
    model, _, _ = client_task.model_and_split(cfg)
    assert all(p.requires_grad for p in model.parameters())


def ditto_round(lam: float) -> tuple[dict, dict, RecordDict]:
    cfg = config("personalization.method='ditto'", f"personalization.lambda={lam}",
                 "personalization.personal-epochs=3")
    shared, _ = global_model(cfg)
    state = RecordDict()
    result = client_task.train(cfg, 0, 1, shared, state)
    assert result.metrics["personal-steps"] > 0
    return shared, result.update, state


def test_ditto_personal_model_is_kept_differs_from_global_and_lambda_pulls_it() -> None:
    shared, free_update, free_state = ditto_round(0.0)
    _, pulled_update, pulled_state = ditto_round(5.0)
    free, pulled = load_personal_model(free_state), load_personal_model(pulled_state)
    assert free is not None and pulled is not None
    free_gap, pulled_gap = distance(free, shared), distance(pulled, shared)
    assert 0 < pulled_gap < free_gap
    # The update sent is the client's FedAvg contribution, whatever lambda does to v.
    for key in free_update:
        np.testing.assert_allclose(free_update[key], pulled_update[key], atol=1e-6)
    assert distance(free, {k: shared[k] + free_update[k] for k in shared}) > 0


def test_ditto_evaluates_the_personal_model_beside_the_global_one() -> None:
    cfg = config("personalization.method='ditto'", "personalization.lambda=0.0",
                 "personalization.personal-epochs=3")
    shared, _, state = ditto_round(0.0)
    metrics = client_task.evaluate_local(cfg, 0, shared, state)
    assert {"val-accuracy", "personal-accuracy", "personal-loss"} <= set(metrics)
    assert metrics["personal-loss"] != metrics["val-loss"]


def test_local_adaptation_is_evaluated_on_a_copy_of_the_received_model() -> None:
    cfg = config("personalization.adapt-steps=4", "personalization.adapt-lr=0.01")
    shared, _ = global_model(cfg)
    first = client_task.evaluate_local(cfg, 1, shared, RecordDict())
    assert {"adapted-accuracy", "adapted-loss", "personal-accuracy"} <= set(first)
    assert first["adapted-loss"] != first["val-loss"]
    model, _, _ = client_task.model_and_split(cfg)
    assert distance(model_state(model, list(shared)), shared) == 0.0  # weights put back
    again = client_task.evaluate_local(cfg, 1, shared, RecordDict())
    assert again == first  # seeded: the same steps on the same batches
    plain = client_task.evaluate_local(config(), 1, shared, RecordDict())
    assert "adapted-accuracy" not in plain and "personal-accuracy" not in plain


def test_reptile_moves_by_meta_lr_and_perfedavg_trains() -> None:
    updates = {}
    for meta_lr in (1.0, 0.5):
        cfg = config("personalization.method='reptile'", f"personalization.meta-lr={meta_lr}",
                     "personalization.adapt-steps=2")
        shared, _ = global_model(cfg)
        updates[meta_lr] = client_task.train(cfg, 0, 1, shared, RecordDict()).update
    for key in updates[1.0]:
        np.testing.assert_allclose(updates[0.5][key], 0.5 * updates[1.0][key], atol=1e-6)
    cfg = config("personalization.method='perfedavg'", "personalization.adapt-steps=2")
    shared, _ = global_model(cfg)
    result = client_task.train(cfg, 0, 1, shared, RecordDict())
    assert result.metrics["steps"] > 0 and distance(result.update, {k: 0 * v for k, v in
                                                                   shared.items()}) > 0
    assert "adapted-accuracy" in client_task.evaluate_local(cfg, 0, shared, RecordDict())


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="adapt-steps"):
        config("personalization.method='perfedavg'")
    with pytest.raises(ValueError, match="personalization.method"):
        config("personalization.method='fedfancy'")
    with pytest.raises(ValueError, match="lambda"):
        config("personalization.method='ditto'", "personalization.lambda=-1.0")


DP_METHODS = [["personalization.method='fedrep'", "personalization.head-epochs=2"],
              ["personalization.method='ditto'", "personalization.personal-epochs=2"],
              ["personalization.method='reptile'", "personalization.adapt-steps=2"],
              ["personalization.method='perfedavg'", "personalization.adapt-steps=2"],
              ["personalization.method='fedper'"]]


@pytest.mark.parametrize("overrides", DP_METHODS)
def test_every_method_trains_under_dp_with_every_pass_accounted(overrides: list[str]) -> None:
    """Each pass over the private data is DP-SGD charged to the one accountant: the round's
    charge is the method's DP steps plus the DP loss figures, and the epsilon is theirs."""
    from fedmirasol.personalization.registry import method
    from fedmirasol.privacy.calibration import SamplingPlan, planned_epsilon
    from fedmirasol.privacy.release_log import ReleaseLog

    cfg = config("privacy.enabled=true", "privacy.noise-multiplier=1.0", *overrides)
    shared, _ = global_model(cfg)
    state = RecordDict()
    log = ReleaseLog.in_state(state)
    result = client_task.train(cfg, 0, 1, shared, state, privacy_log=log)
    assert result.update is not None and set(result.update) <= set(shared)
    data = client_task.client_data.client_data(cfg, 0)
    plan = SamplingPlan.for_round(len(data.train), cfg.client.batch_size, 1)
    steps = method(cfg.personalization).private_steps(plan.steps, cfg.client.local_epochs) + 1
    assert result.metrics["dp-round-steps"] == result.metrics["dp-total-steps"] == steps
    assert log.history("run") == [(1.0, plan.sample_rate, steps)]
    assert result.metrics["dp-epsilon"] == pytest.approx(
        planned_epsilon(1.0, plan.sample_rate, steps, cfg.privacy.delta, "rdp"), rel=1e-9)
    assert not {"head-loss", "body-loss", "personal-loss", "train-loss"} & set(result.metrics)


def test_local_adaptation_under_dp_is_charged_and_released_noised() -> None:
    from fedmirasol.privacy.release_log import ReleaseLog

    cfg = config("privacy.enabled=true", "privacy.noise-multiplier=1.0",
                 "personalization.adapt-steps=3", "privacy.eval-noise-multiplier=4.0")
    shared, _ = global_model(cfg)
    state = RecordDict()
    log = ReleaseLog.in_state(state)
    metrics = client_task.evaluate_local(cfg, 0, shared, state, privacy_log=log)
    assert {"dp-eval-adapted-correct-noised", "dp-eval-correct-noised"} <= set(metrics)
    assert not {"adapted-accuracy", "val-accuracy"} & set(metrics)
    q = log.history("run")[0][1]
    assert log.history("run") == [(1.0, q, 3), (4.0, 1.0, 1)]  # 3 DP steps, one DP release


def test_registry_names_every_configurable_method():
    from fedmirasol.config import personalization as config_personalization
    from fedmirasol.personalization.registry import METHODS, PersonalizationMethod

    assert tuple(METHODS) == config_personalization.METHODS
    for name, cls in METHODS.items():
        assert issubclass(cls, PersonalizationMethod) and cls.name == name
