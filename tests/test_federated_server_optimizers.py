"""FedYogi, FedAdagrad and FedAvgM end to end in Flower's simulation engine (FedAdam is covered
over secure aggregation in test_secagg_app.py).

Each runs 2 rounds of the simulation test's federation (`config` of test_federated_simulation:
5 clients, 4 sampled, one crashing and one replying NaN). The test replays the accepted
clients' training of each round in this process (same seeds, same code), takes the plain
weighted mean of their updates, applies the server optimizer's update rule to it, and finds
that model in the round's checkpoint, measurably away from the plain mean.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict

from fedmirasol.runs import run_dir as rundir
from fedmirasol.client.task import train
from fedmirasol.server.loop import FederatedRun
from fedmirasol.engines.simulation import simulate
from test_federated_simulation import config

pytestmark = pytest.mark.slow

ROUNDS = 2
ETA, BETA_1, BETA_2, TAU, MOMENTUM = 0.01, 0.9, 0.99, 1e-3, 0.9
STRATEGIES = {
    "fedyogi": [f"strategy.server-lr={ETA}", f"strategy.beta-1={BETA_1}",
                f"strategy.beta-2={BETA_2}", f"strategy.tau={TAU}"],
    "fedadagrad": [f"strategy.server-lr={ETA}", f"strategy.tau={TAU}"],  # no first moment
    # Learning rate 1: round 1 lands on the plain mean, round 2 is pushed on by momentum.
    "fedavgm": ["strategy.server-lr=1.0", f"strategy.server-momentum={MOMENTUM}"],
}


@pytest.fixture(scope="module", params=sorted(STRATEGIES))
def optimizer_run(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    cfg = config(tmp_path_factory.mktemp(name), f"num-rounds={ROUNDS}",
                 f"strategy.name='{name}'", *STRATEGIES[name])
    return name, simulate(cfg, progress=None)


def checkpoint_weights(run_dir: Path, server_round: int) -> dict[str, np.ndarray]:
    return rundir.read_checkpoint(run_dir / "checkpoints" / f"round-{server_round:04d}.json"
                                  ).global_shared


def plain_mean(cfg: dict, server_round: int, record: dict, weights: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """The example-weighted mean of the round's accepted clients' models, replayed here."""
    total, summed = 0, {k: np.zeros_like(v, dtype=np.float64) for k, v in weights.items()}
    for pid in record["participants"]:
        result = train(cfg, pid, server_round, weights, RecordDict())
        n = record["clients"][str(pid)]["train_examples"]
        assert result.num_examples == n
        for k, delta in result.update.items():
            summed[k] += n * (weights[k] + delta)
        total += n
    return {k: v / total for k, v in summed.items()}


class ServerOptimizer:
    """The update rule each strategy is defined by, written out for the test."""

    def __init__(self, name: str) -> None:
        self.name, self.m, self.v = name, None, None

    def step(self, current: dict[str, np.ndarray], mean: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
        if self.name == "fedavgm":  # SGD with momentum on the pseudo-gradient current - mean
            grad = {k: current[k] - mean[k] for k in current}
            self.m = grad if self.m is None else {k: MOMENTUM * self.m[k] + grad[k]
                                                  for k in grad}
            return {k: current[k] - 1.0 * self.m[k] for k in current}
        delta = {k: mean[k] - current[k] for k in current}
        zeros = {k: np.zeros_like(d) for k, d in delta.items()}
        m, v = self.m or zeros, self.v or zeros
        beta_1 = 0.0 if self.name == "fedadagrad" else BETA_1  # Adagrad: m_t is the delta
        self.m = {k: beta_1 * m[k] + (1 - beta_1) * delta[k] for k in delta}
        if self.name == "fedadagrad":
            self.v = {k: v[k] + delta[k] ** 2 for k in delta}
        else:  # fedyogi
            self.v = {k: v[k] - (1 - BETA_2) * delta[k] ** 2 * np.sign(v[k] - delta[k] ** 2)
                      for k in delta}
        return {k: current[k] + ETA * self.m[k] / (np.sqrt(self.v[k]) + TAU) for k in current}


def test_metrics_are_written_and_finite(optimizer_run) -> None:
    name, run = optimizer_run
    records = rundir.read_metrics(run)
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for record in records[1:]:
        assert record["aggregate_kept_previous"] is None
        assert set(record["participants"]) == set(record["sampled"]) - {3, 4}
        for key in ("train_loss", "centralized_accuracy", "centralized_loss",
                    "federated_accuracy", "federated_loss"):
            assert math.isfinite(record[key]), key
    report = rundir.read_report(run)
    assert report["strategy"] == name and report["rounds_completed"] == ROUNDS
    for server_round in range(1, ROUNDS + 1):
        assert all(np.isfinite(v).all() for v in checkpoint_weights(run, server_round).values())


def test_the_server_step_is_the_optimizers_not_the_plain_mean(optimizer_run, tmp_path) -> None:
    name, run = optimizer_run
    cfg = rundir.read_config(run)
    current = FederatedRun(None, cfg, tmp_path).global_shared  # the initial model
    optimizer = ServerOptimizer(name)
    for record in rundir.read_metrics(run)[1:]:
        mean = plain_mean(cfg, record["round"], record, current)
        expected = optimizer.step({k: v.astype(np.float64) for k, v in current.items()}, mean)
        actual = checkpoint_weights(run, record["round"])
        assert actual.keys() == expected.keys()
        for k, value in actual.items():
            np.testing.assert_allclose(value, expected[k], rtol=1e-4, atol=2e-5, err_msg=k)
        away = max(float(np.abs(actual[k] - mean[k]).max()) for k in actual)
        if name == "fedavgm" and record["round"] == 1:
            assert away < 1e-5  # lr 1, no momentum yet: the plain mean
        else:
            assert away > 1e-3, (name, record["round"])
        current = actual
