"""Secure aggregation's protocol over an in-process Grid with stand-in training: five clients
whose 'training' returns a fixed random update, each with a provisioned long-term identity.
Shared by the protocol tests and the attack suite."""

from __future__ import annotations

from typing import Collection

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmirasol.config.secagg import SecAggConfig
from fedmirasol.core.parameters import to_record
from fedmirasol.secagg import client
from fedmirasol.secagg.identity import provision
from fedmirasol.secagg.server import SecureAggregator
from fedmirasol.testing.local_grid import LocalGrid

SPEC = [("a", (30, 20)), ("b", (50,))]
NODES = [101, 102, 103, 104, 105]
FRACTION = 0.6  # t = 3 of 5: n - t = 2


def settings(**values: object) -> SecAggConfig:
    return SecAggConfig(enabled=True, **{"reconstruction_fraction": FRACTION, **values})


class Clients:
    """Honest clients on `nodes` (the five NODES by default); `exhausted` partitions have
    nothing to contribute."""

    def __init__(self, scale: float = 0.5, exhausted: Collection[int] = (),
                 rules: SecAggConfig | None = None, nodes: list[int] = NODES) -> None:
        rng = np.random.default_rng(0)
        self.updates = {pid: {k: rng.uniform(-scale, scale, s).astype(np.float32)
                              for k, s in SPEC} for pid in range(len(nodes))}
        self.counts = {pid: 3 + 2 * pid for pid in self.updates}
        self.losses = {pid: 0.5 + pid for pid in self.updates}
        self.accuracies = {pid: 0.1 * (pid + 1) for pid in self.updates}
        self.exhausted = set(exhausted)
        self.identities = provision(len(nodes))
        self.rules = rules or settings()
        self.received: list[Message] = []
        app = ClientApp()
        client.register(app, client.ClientHooks(
            train=self.train, evaluate=self.evaluate, run_seed=lambda message: 0,
            settings=lambda message, context: self.rules,
            identity=lambda message, context: self.identities[self.pid(context)],
            nothing_to_contribute=self.nothing_to_contribute))
        self.grid = LocalGrid(app, {node: {"partition-id": pid} for pid, node in
                                    enumerate(nodes)}, observe=self.received.append)

    @staticmethod
    def pid(context) -> int:  # noqa: ANN001
        return int(context.node_config["partition-id"])

    def nothing_to_contribute(self, message: Message, context) -> Message | None:  # noqa: ANN001
        pid = self.pid(context)
        if pid not in self.exhausted:
            return None
        return Message(RecordDict({"metrics": MetricRecord({
            "partition-id": pid, "dp-budget-exhausted": 1, "dp-epsilon": 8.0})}),
            reply_to=message)

    def train(self, message: Message, context) -> Message:  # noqa: ANN001
        pid = self.pid(context)
        return Message(RecordDict({"arrays": to_record(self.updates[pid]), "metrics":
                                   MetricRecord({"num-examples": self.counts[pid],
                                                 "partition-id": pid,
                                                 "train-loss": self.losses[pid]})}),
                       reply_to=message)

    def evaluate(self, message: Message, context) -> Message:  # noqa: ANN001
        pid = self.pid(context)
        return Message(RecordDict({"metrics": MetricRecord({
            "num-examples": self.counts[pid], "partition-id": pid,
            "val-loss": self.losses[pid], "val-accuracy": self.accuracies[pid]})}),
            reply_to=message)

    def mean(self, pids: list[int], weighted: bool = True) -> dict[str, np.ndarray]:
        weights = {p: self.counts[p] if weighted else 1 for p in pids}
        return {k: sum(weights[p] * self.updates[p][k].astype(np.float64) for p in pids)
                / sum(weights.values()) for k, _ in SPEC}


def train_messages(server_round: int = 1, nodes: list[int] = NODES) -> list[Message]:
    model = to_record({k: np.zeros(s, np.float32) for k, s in SPEC})
    return [Message(RecordDict({"arrays": model, "config": ConfigRecord(
        {"server-round": server_round})}), dst_node_id=node, message_type=MessageType.TRAIN,
        group_id=str(server_round)) for node in nodes]


def aggregator(bound: float = 1.0, weighting: str = "examples", max_weight: int = 100_000,
               max_norm: float | None = None, **values: object) -> SecureAggregator:
    return SecureAggregator(settings(**values), SPEC, bound, weighting, max_weight, max_norm)


def max_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(got[k] - want[k]).max()) for k in want)
