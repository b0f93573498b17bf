"""Flower strategies from the run config's `strategy` section, and their resumable state.

Every algorithm is one of Flower's own (flwr.serverapp.strategy); FedBN is FedAvg over the
shared parameters only (the split keeps normalization layers on the clients); FLTrust samples
as FedAvg and aggregates in `fedmirasol.server.aggregators.fltrust`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
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

from fedmirasol.config.run import RunConfig
from fedmirasol.runs.run_dir import StrategyState

# Attributes through which Flower's strategies carry state from round to round.
STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector")


def build_strategy(config: RunConfig) -> Strategy:
    """The Flower strategy named by `strategy.name`, with its sampling settings."""
    s = config.strategy
    common: dict[str, Any] = dict(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes,
        min_evaluate_nodes=s.min_evaluate_nodes,
        min_available_nodes=s.min_available_nodes,
    )
    name = s.name
    if name in ("fedavg", "fedbn", "fltrust"):  # FLTrust's aggregate: its own aggregator
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=s.proximal_mu)
    optimizer = dict(eta=s.server_lr, beta_1=s.beta_1, tau=s.tau)
    if name == "fedadam":
        return FedAdam(**common, **optimizer, beta_2=s.beta_2)
    if name == "fedyogi":
        return FedYogi(**common, **optimizer, beta_2=s.beta_2)
    if name == "fedadagrad":
        return FedAdagrad(**common, eta=s.server_lr, tau=s.tau)
    if name == "fedavgm":
        return FedAvgM(**common, server_learning_rate=s.server_lr,
                       server_momentum=s.server_momentum)
    if name == "trimmed-mean":
        return FedTrimmedAvg(**common, beta=s.trim_beta)
    if name == "median":
        return FedMedian(**common)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=s.num_malicious)
    if name == "multikrum":
        keep = s.num_to_keep or 1
        return MultiKrum(**common, num_malicious_nodes=s.num_malicious,
                         num_nodes_to_select=keep)
    if name == "bulyan":
        return Bulyan(**common, num_malicious_nodes=s.num_malicious)
    raise ValueError(f"unknown strategy.name {name!r}")


def proximal_mu(strategy: Strategy) -> float:
    """The mu a FedProx strategy sends its clients (0 for every other strategy)."""
    return float(getattr(strategy, "proximal_mu", 0.0))


def strategy_state(strategy: Strategy) -> StrategyState:
    """The strategy's round-to-round state (server optimizer moments, momentum) as arrays."""
    state: StrategyState = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            state[name] = ("record", list(value.keys()), value.to_numpy_ndarrays())
        elif isinstance(value, dict):
            state[name] = ("dict", list(value), [np.asarray(v) for v in value.values()])
        elif isinstance(value, list):
            state[name] = ("list", [str(i) for i in range(len(value))],
                           [np.asarray(v) for v in value])
        else:
            raise TypeError(f"strategy state {name!r} of type {type(value).__name__} has no "
                            "array form")
    return state


def restore_strategy_state(strategy: Strategy, state: StrategyState) -> None:
    for name, (kind, names, arrays) in state.items():
        if not hasattr(strategy, name):
            raise ValueError(f"checkpointed strategy state {name!r} does not fit "
                             f"{type(strategy).__name__}")
        if kind == "record":
            value: Any = ArrayRecord({k: Array(v) for k, v in zip(names, arrays)})
        elif kind == "dict":
            value = dict(zip(names, arrays))
        elif kind == "list":
            value = list(arrays)
        else:
            raise ValueError(f"checkpointed strategy state {name!r} has unknown kind {kind!r}")
        setattr(strategy, name, value)
