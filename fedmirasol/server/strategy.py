"""Flower strategies from the run config's `strategy` section, and their resumable state.

Every algorithm is one of Flower's own (flwr.serverapp.strategy); FedBN is FedAvg over the
shared parameters only (the split keeps normalization layers on the clients).
"""

from __future__ import annotations

import pickle
from typing import Any, Mapping

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

# Attributes through which Flower's strategies carry state from round to round.
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")


def build_strategy(config: Mapping[str, Any]) -> Strategy:
    """The Flower strategy named by `strategy.name`, with its sampling settings."""
    s = config["strategy"]
    common: dict[str, Any] = dict(
        fraction_train=s["fraction-train"],
        fraction_evaluate=s["fraction-evaluate"],
        min_train_nodes=s["min-train-nodes"],
        min_evaluate_nodes=s["min-evaluate-nodes"],
        min_available_nodes=s["min-available-nodes"],
    )
    name = s["name"]
    if name in ("fedavg", "fedbn"):
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=s["proximal-mu"])
    optimizer = dict(eta=s["server-lr"], beta_1=s["beta-1"], tau=s["tau"])
    if name == "fedadam":
        return FedAdam(**common, **optimizer, beta_2=s["beta-2"])
    if name == "fedyogi":
        return FedYogi(**common, **optimizer, beta_2=s["beta-2"])
    if name == "fedadagrad":
        return FedAdagrad(**common, eta=s["server-lr"], tau=s["tau"])
    if name == "fedavgm":
        return FedAvgM(**common, server_learning_rate=s["server-lr"],
                       server_momentum=s["server-momentum"])
    if name == "trimmed-mean":
        return FedTrimmedAvg(**common, beta=s["trim-beta"])
    if name == "median":
        return FedMedian(**common)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=s["num-malicious"])
    if name == "multikrum":
        keep = s["num-to-keep"] or 1
        return MultiKrum(**common, num_malicious_nodes=s["num-malicious"],
                         num_nodes_to_select=keep)
    if name == "bulyan":
        return Bulyan(**common, num_malicious_nodes=s["num-malicious"])
    raise ValueError(f"unknown strategy.name {name!r}")


def proximal_mu(strategy: Strategy) -> float:
    """The mu a FedProx strategy sends its clients (0 for every other strategy)."""
    return float(getattr(strategy, "proximal_mu", 0.0))


def strategy_state(strategy: Strategy) -> bytes:
    """The strategy's round-to-round state (server optimizer moments, momentum), pickled."""
    return pickle.dumps({name: getattr(strategy, name) for name in STATE_ATTRIBUTES
                         if hasattr(strategy, name)})


def restore_strategy_state(strategy: Strategy, payload: bytes) -> None:
    for name, value in pickle.loads(payload).items():
        if not hasattr(strategy, name):
            raise ValueError(f"checkpointed strategy state {name!r} does not fit "
                             f"{type(strategy).__name__}")
        setattr(strategy, name, value)
