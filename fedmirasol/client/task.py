"""A client's local work, free of Flower messages: train from the global model, evaluate.

The model starts from the same seeded initialization on every client and on the server, so
local parameters (never sent) begin identical everywhere. Training is seeded by
(run seed, round, client) so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.config.run import RunConfig
from fedmirasol.core.seeds import seed_for
from fedmirasol.task import data as client_data
from fedmirasol.task.model import init_model
from fedmirasol.client import state as client_state
from fedmirasol.core.parameters import (
    NumpyState,
    ParameterSplit,
    delta,
    load_state,
    model_state,
)
from fedmirasol.pretrained.checkpoint import frozen_names
from fedmirasol.core.proximal import proximal_term
from fedmirasol.personalization import (
    LocalWork,
    evaluate_personal,
    reply_metrics,
    train_round,
)
from fedmirasol.privacy.client_level import clip_update
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate, train_epochs
from fedmirasol.training.text_eval import text_reply_metrics

if TYPE_CHECKING:
    from fedmirasol.privacy.client_round import PrivateRound


@dataclass(frozen=True)
class TrainResult:
    update: NumpyState | None  # delta of the shared parameters; None: DP budget exhausted
    num_examples: int
    metrics: dict[str, float]


@functools.lru_cache(maxsize=2)
def _cached_model(config: RunConfig, local: str) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    model = init_model(config)
    frozen = frozen_names(config.pretrained, model)
    split = ParameterSplit.from_model(model, local, frozen)
    initial_local = model_state(model, split.local)
    return model, initial_local, split


def model_and_split(config: Mapping[str, Any]) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    """A per-process model (reused across calls), its initial local state, and the split."""
    key = RunConfig.model_construct(seed=config.seed, model=config.model,
                                    pretrained=config.pretrained, data=config.data)
    return _cached_model(key, config.local_selectors())


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


def _optimizer(model: nn.Module, client: Mapping[str, Any],
               lr: float | None = None) -> torch.optim.Optimizer:
    """The client's optimizer over `model`'s trainable parameters (lr: None = client.lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = client.lr if lr is None else lr
    if client.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=client.momentum,
                               weight_decay=client.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=client.weight_decay)


def train(config: Mapping[str, Any], partition_id: int, server_round: int,
          global_shared: Mapping[str, np.ndarray], state: RecordDict,
          proximal_mu: float = 0.0) -> TrainResult:
    """Local training from the global model; returns the shared-parameter delta.

    With `privacy.enabled` the round is DP-SGD (Opacus) accounted in the client's state; a
    client whose round would pass its budget trains nothing and returns no update. With
    `privacy.client-level` the update is clipped to `privacy.client-clip-norm`.
    """
    client = config.client
    torch.set_num_threads(client.threads)
    data = client_data.client_data(config, partition_id)
    privacy = config.privacy
    private = _private_round(config, len(data.train), state) if privacy.enabled else None
    if private is not None:
        if not private.budget.allowed:  # never trains past the budget
            return TrainResult(update=None, num_examples=len(data.train),
                               metrics=private.metrics())
    model, split = prepare_model(config, global_shared, state)
    device = resolve_device(client.device)
    model.to(device)
    seed = seed_for(config.seed, server_round, partition_id)
    torch.manual_seed(seed)
    extra = proximal_term(proximal_mu, global_shared) if proximal_mu > 0 else None
    loader = client_data.loader(data.train, client.batch_size, shuffle=True, seed=seed)

    def train_pass(target: nn.Module) -> dict[str, float]:
        """The ordinary local training: DP-SGD under privacy, plain epochs otherwise."""
        if private is None:
            return train_epochs(target, loader, _optimizer(target, client),
                                epochs=client.local_epochs, device=device, extra_loss=extra)
        # Batches and noise from a secret seed (not the run's public one): see PrivateRound.
        result = private.train(target, data.train, _optimizer(target, client),
                               extra_loss=extra, device=device)
        private.save(state)
        return result

    # Personalization (config validation refuses methods that train outside the DP pass).
    metrics = train_round(config.personalization, LocalWork(
        model=model, loader=loader, make_optimizer=lambda m, lr: _optimizer(m, client, lr),
        train_pass=train_pass, epochs=client.local_epochs, personal=split.local,
        global_shared=global_shared, state=state, device=device, extra_loss=extra))
    model.to("cpu")
    client_state.save_local_params(state, model_state(model, split.local))
    update = delta(model_state(model, split.shared), global_shared)
    reply: dict[str, float] = {"train-loss": metrics["loss"],
                               "proximal-term": metrics.get("loss_extra", 0.0),
                               "steps": metrics["steps"]}
    if "loss_class" in metrics:
        reply["train-class-loss"] = metrics["loss_class"]
    if "loss_text" in metrics:
        reply["train-text-loss"] = metrics["loss_text"]
    reply.update(reply_metrics(metrics))
    if private is not None:
        reply.update(private.metrics())
    if privacy.client_level:
        update, reply["update-norm"] = clip_update(update, privacy.client_clip_norm)
    reply.update({name: float(count) for name, count in data.skipped.items()})
    return TrainResult(update=update, num_examples=len(data.train), metrics=reply)


def _private_round(config: RunConfig, num_examples: int, state: RecordDict) -> PrivateRound:
    """This round's DP-SGD plan, checked against the budget (nothing trained yet)."""
    from fedmirasol.privacy.client_round import PrivateRound  # Opacus: only under DP

    client = config.client
    return PrivateRound.begin(state, config.privacy, num_examples=num_examples,
                              batch_size=client.batch_size, epochs=client.local_epochs,
                              num_rounds=config.num_rounds)


def exhausted_bookkeeping(config: RunConfig, partition_id: int, state: RecordDict
                          ) -> dict[str, Any] | None:
    """Under DP-SGD, the public bookkeeping of a client whose next round would pass its
    budget (so it trains nothing); None when it may train."""
    if not config.privacy.enabled:
        return None
    data = client_data.client_data(config, partition_id)
    private = _private_round(config, len(data.train), state)
    return None if private.budget.allowed else private.metrics()


def evaluate_local(config: Mapping[str, Any], partition_id: int,
                   global_shared: Mapping[str, np.ndarray], state: RecordDict) -> dict[str, float]:
    """The global model (with this client's local parameters) on the client's validation split,
    and, with personalization, its personalized (and locally adapted) model."""
    client = config.client
    torch.set_num_threads(client.threads)
    data = client_data.client_data(config, partition_id)
    model, _ = prepare_model(config, global_shared, state)
    device = resolve_device(client.device)
    model.to(device)
    val = client_data.loader(data.val, client.eval_batch_size, shuffle=False)
    result = evaluate(model, val, device=device, generation=config.task.generation())
    metrics: dict[str, float] = {"val-loss": result["loss"], "val-accuracy": result["accuracy"],
                                 "num-examples": int(result["num_examples"]),
                                 **text_reply_metrics(result, "val-")}
    train = client_data.loader(data.train, client.batch_size, shuffle=True,
                               seed=seed_for(config.seed, partition_id, 3))
    metrics.update(evaluate_personal(config.personalization, model, train,
                                     val, lambda m, lr: _optimizer(m, client, lr), state,
                                     result, device))
    model.to("cpu")
    return metrics
