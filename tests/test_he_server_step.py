"""The server's step under homomorphic encryption runs on the clients (ServerStepOnClients):
over several rounds of encrypted replies it moves the model where the plain server's Flower
strategy does (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM), the optimizer state
travelling encrypted with the sum.

Tolerances: the mean-only strategies agree to float32 rounding. The adaptive ones divide by
sqrt(v) + tau (tau = 1e-3), which multiplies any error of a small mean update by up to
eta (1 - beta_1) / tau = 5 here: the plain path's own float32 rounding of the proposed models
(it adds each update to the model in float32; the clients step on float64 means) then shows
as differences up to ~5e-6 (the plain path differs from the exact float64 step by 3.2e-6 in
round 1 of FedAdagrad)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import load_config
from fedmirasol.core.parameters import to_record
from fedmirasol.he import codec, summing
from fedmirasol.he.ckks import new_site_context
from fedmirasol.he.params import CkksParameters
from fedmirasol.he.wire import pack, read_header
from fedmirasol.server.aggregators import he_step as he_aggregator
from fedmirasol.server.aggregators.he_step import ServerStepOnClients
from fedmirasol.server.aggregators.mean import strategy_step
from fedmirasol.server.strategy import build_strategy
from fedmirasol.testing.local_grid import LocalGrid

SHAPES = {"a": (30, 20), "b": (20,)}
WEIGHTS = [7, 3, 12]
ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def config(strategy: str):
    values = {"strategy.name": strategy, "he.enabled": True, "server.evaluate-every": 0,
              "strategy.server-lr": 0.05, "data.num-clients": 3}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def reply(update: dict[str, np.ndarray], weight: int) -> Message:
    return Message(content=RecordDict({"arrays": to_record(update), "metrics": MetricRecord(
        {"num-examples": weight})}), dst_node_id=1, message_type="train")


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad",
                                      "fedavgm"])
def test_clients_step_as_the_plain_server_does(strategy: str) -> None:
    cfg = config(strategy)
    rng = np.random.default_rng(0)
    start = {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
    grid = LocalGrid(ClientApp(), {1: {}, 2: {}, 3: {}})
    site = new_site_context(CkksParameters(poly_modulus_degree=4096))
    server_step = ServerStepOnClients()

    plain_strategy, plain = build_strategy(cfg), dict(start)
    model, state = dict(start), server_step.initial_state(cfg, start)
    for server_round in (1, 2, 3, 4):
        updates = [{name: (rng.normal(size=shape) * 0.01).astype(np.float32)
                    for name, shape in SHAPES.items()} for _ in WEIGHTS]
        # the plain server: Flower's configure_train, then the strategy's aggregate
        list(plain_strategy.configure_train(server_round, to_record(plain), ConfigRecord(),
                                            grid))
        plain, reason = strategy_step(plain_strategy, server_round,
                                      [reply(u, w) for u, w in zip(updates, WEIGHTS)], plain)
        assert reason is None
        # HE: every client encrypts its proposal and the state; the sum, decrypted, stepped
        replies = []
        for update, weight in zip(updates, WEIGHTS):
            layout, values = server_step.segments(cfg, model, state, update)
            replies.append(codec.encrypt(site, layout, values, weight, 4, 3))
        header = read_header(replies[0])
        batches, members, _ = summing.sum_replies(site, header, replies)
        sums = codec.decrypt(site, pack(header.summed(server_round, 3, 3, str(server_round)),
                                        batches), 2)[1]
        model, state = server_step.step(cfg, server_round, layout, sums.segments)
        for name in SHAPES:
            assert model[name].dtype == np.float32
            np.testing.assert_allclose(model[name], plain[name], rtol=0,
                                       atol=2e-5 if strategy in ADAPTIVE else 2e-6,
                                       err_msg=f"{strategy} round {server_round}")
    moved = max(float(np.abs(model[k] - start[k]).max()) for k in SHAPES)
    assert moved > 1e-3
    if strategy in ADAPTIVE:
        assert set(state) == {"current_arrays", "m_t", "v_t"}
    if strategy == "fedavg":
        assert state == {} and [s.name for s in layout.segments] == ["proposal"]


def test_client_level_dp_noise_is_shared_among_the_clients(monkeypatch) -> None:
    """Client-level DP under HE: each client adds N(0, (zC)^2 / (min-contributors - 1)) to its
    clipped update; the decrypted mean over the m sampled is the clipped updates' sum / m plus
    noise of std sqrt(K / (min-contributors - 1)) z C / m (K contributors), at least the
    central mechanism's z C / m."""
    cfg = load_config(None, ["he.enabled=true", "server.evaluate-every=0", "data.num-clients=5",
                             "privacy.client-level=true", "privacy.client-clip-norm=0.5",
                             "privacy.client-noise-multiplier=2.0", "he.min-contributors=3"])
    step = ServerStepOnClients()
    model = {"w": np.zeros(60000, np.float32), "b": np.ones(10, np.float32),
             "buffer": np.ones(3, np.float32)}  # a buffer: no update, no noise
    monkeypatch.setattr(he_aggregator, "_trainable", lambda config, names: {"w", "b"})
    site = new_site_context(CkksParameters())
    rng = np.random.default_rng(1)
    updates = [{"w": (rng.normal(size=60000) * 1e-3).astype(np.float32),
                "b": np.zeros(10, np.float32)} for _ in range(4)]
    replies = []
    for update in updates:
        layout, values = step.segments(cfg, model, {}, update)
        assert [s.name for s in layout.segments] == ["base", "update"]
        assert list(values["update"]) == ["w", "b"]
        replies.append(codec.encrypt(site, layout, values, 1, 8, 5))
    header = read_header(replies[0])
    batches, members, _ = summing.sum_replies(site, header, replies)
    sampled = 5  # one of the five sampled clients did not answer: a zero update
    _, sums = codec.decrypt(site, pack(header.summed(1, 4, sampled, "s"), batches), 3)
    new, state = step.step(cfg, 1, layout, sums.segments)
    assert state == {}
    np.testing.assert_array_equal(new["buffer"], model["buffer"])
    noise = new["w"] - sum(u["w"] for u in updates) / sampled
    expected = np.sqrt(4 / 2) * 2.0 * 0.5 / sampled  # sqrt(K / (min - 1)) z C / m
    assert abs(noise.mean()) < 0.02 * expected  # 5 standard errors of the mean of 60000
    assert noise.std() == pytest.approx(expected, rel=0.02)
    assert noise.std() > 2.0 * 0.5 / sampled  # above the central mechanism's
