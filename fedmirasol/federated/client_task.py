"""A client's local work, free of Flower messages: train from the global model, evaluate.

The model starts from the same seeded initialization on every client and on the server, so
local parameters (never sent) begin identical everywhere. Training is seeded by
(run seed, round, client) so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.federated import client_data, client_state
from fedmirasol.federated.parameters import (
    NumpyState,
    ParameterSplit,
    delta,
    load_state,
    model_state,
)
from fedmirasol.federated.proximal import proximal_term
from fedmirasol.federated.run_config import local_spec, model_config, parse_ids
from fedmirasol.models import build_model
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate, train_epochs


class InjectedFault(RuntimeError):
    """Raised by a client listed in `faults.crash-clients`."""


@dataclass(frozen=True)
class TrainResult:
    update: NumpyState  # delta of the shared parameters
    num_examples: int
    metrics: dict[str, float]


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, round, client, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def init_model(config: Mapping[str, Any]) -> nn.Module:
    """The run's initial model, identical on every process for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return build_model(model_config(config))


@functools.lru_cache(maxsize=2)
def _cached_model(model_key: str) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    config = json.loads(model_key)
    model = init_model(config)
    split = ParameterSplit.from_model(model, config["local"])
    initial_local = model_state(model, split.local)
    return model, initial_local, split


def model_and_split(config: Mapping[str, Any]) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    """A per-process model (reused across calls), its initial local state, and the split."""
    key = json.dumps({"seed": config["seed"], "model": config["model"],
                      "local": local_spec(config)}, sort_keys=True)
    return _cached_model(key)


def prepare_model(config: Mapping[str, Any], global_shared: Mapping[str, np.ndarray],
                  state: RecordDict) -> tuple[nn.Module, ParameterSplit]:
    """The model holding the global shared parameters and this client's local ones."""
    model, initial_local, split = model_and_split(config)
    missing = [name for name in split.shared if name not in global_shared]
    extra = [name for name in global_shared if name not in split.shared]
    if missing or extra:
        raise ValueError(f"the server's arrays do not match the shared parameters: missing "
                         f"{missing[:3]}, unexpected {extra[:3]}")
    load_state(model, global_shared)
    local = client_state.load_local_params(state)
    load_state(model, local if local is not None else initial_local)
    return model, split


def _optimizer(model: nn.Module, client: Mapping[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if client["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=client["lr"], momentum=client["momentum"],
                               weight_decay=client["weight-decay"])
    return torch.optim.Adam(params, lr=client["lr"], weight_decay=client["weight-decay"])


def train(config: Mapping[str, Any], partition_id: int, server_round: int,
          global_shared: Mapping[str, np.ndarray], state: RecordDict,
          proximal_mu: float = 0.0) -> TrainResult:
    """Local training from the global model; returns the shared-parameter delta."""
    client = config["client"]
    torch.set_num_threads(client["threads"])
    if partition_id in parse_ids(config["faults"]["crash-clients"]):
        raise InjectedFault(f"client {partition_id} crashed on purpose (faults.crash-clients)")
    if partition_id in parse_ids(config["faults"]["slow-clients"]):
        time.sleep(config["faults"]["slow-seconds"])
    data = client_data.client_data(config, partition_id)
    model, split = prepare_model(config, global_shared, state)
    device = resolve_device(client["device"])
    model.to(device)
    seed = seed_for(config["seed"], server_round, partition_id)
    torch.manual_seed(seed)
    extra = proximal_term(proximal_mu, global_shared) if proximal_mu > 0 else None
    metrics = train_epochs(
        model, client_data.loader(data.train, client["batch-size"], shuffle=True, seed=seed),
        _optimizer(model, client), epochs=client["local-epochs"], device=device,
        extra_loss=extra,
    )
    model.to("cpu")
    client_state.save_local_params(state, model_state(model, split.local))
    update = delta(model_state(model, split.shared), global_shared)
    if partition_id in parse_ids(config["faults"]["nan-clients"]):
        first = next(iter(update))
        update[first] = np.full_like(update[first], math.nan)
    return TrainResult(update=update, num_examples=len(data.train),
                       metrics={"train-loss": metrics["loss"],
                                "train-class-loss": metrics.get("loss_class", math.nan),
                                "proximal-term": metrics.get("loss_extra", 0.0),
                                "steps": metrics["steps"],
                                **{name: float(count) for name, count in data.skipped.items()}})


def evaluate_local(config: Mapping[str, Any], partition_id: int,
                   global_shared: Mapping[str, np.ndarray], state: RecordDict) -> dict[str, float]:
    """The global model (with this client's local parameters) on the client's validation split."""
    torch.set_num_threads(config["client"]["threads"])
    data = client_data.client_data(config, partition_id)
    model, _ = prepare_model(config, global_shared, state)
    device = resolve_device(config["client"]["device"])
    model.to(device)
    result = evaluate(model, client_data.loader(data.val, config["client"]["eval-batch-size"],
                                                 shuffle=False), device=device)
    model.to("cpu")
    return {"val-loss": result["loss"], "val-accuracy": result["accuracy"],
            "num-examples": int(result["num_examples"])}
