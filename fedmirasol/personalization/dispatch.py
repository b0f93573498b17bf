"""The one entry point the client task calls: local training and personalized evaluation by
`personalization.method`.

`train_round` leaves the model holding what the client sends (its shared parameters, as a
delta from the received ones) and keeps (its local/personal parameters); Ditto's personal
model goes to the client's state on the side. `evaluate_personal` adds, per client, the
accuracy of its personalized model (and of the locally adapted model when adapt-steps > 0)
beside the global model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.data.batch import Batch
from fedmirasol.core.parameters import load_state
from fedmirasol.personalization.adaptation import adapted_evaluation
from fedmirasol.personalization.ditto import load_personal_model, train_personal
from fedmirasol.personalization.fedrep import train_fedrep
from fedmirasol.personalization.perfedavg import train_perfedavg
from fedmirasol.personalization.reptile import train_reptile
from fedmirasol.personalization.settings import META_METHODS, PersonalizationSettings
from fedmirasol.personalization.trainable import MakeOptimizer, restored_afterwards
from fedmirasol.training.loop import ExtraLoss, evaluate

# The client's ordinary local-training pass over its data (plain or DP-SGD), on `model`.
TrainPass = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class LocalWork:
    """What a client's round works with."""

    model: nn.Module
    loader: Iterable[Batch]  # the client's training batches
    make_optimizer: MakeOptimizer
    train_pass: TrainPass
    epochs: int
    personal: tuple[str, ...]  # state_dict names kept on the client (never sent)
    global_shared: Mapping[str, np.ndarray]
    state: RecordDict
    device: torch.device | str = "cpu"
    extra_loss: ExtraLoss | None = None


def train_round(settings: PersonalizationSettings, work: LocalWork) -> dict[str, float]:
    """One round of local work by method; returns the training metrics."""
    method, model = settings.method, work.model
    if method == "fedrep":
        return train_fedrep(model, work.loader, work.make_optimizer, personal=work.personal,
                            head_epochs=settings.head_epochs, body_epochs=settings.body_epochs,
                            device=work.device, extra_loss=work.extra_loss)
    if method == "reptile":
        return train_reptile(model, work.loader, inner_lr=settings.inner_lr,
                             meta_lr=settings.meta_lr, epochs=work.epochs, device=work.device,
                             extra_loss=work.extra_loss)
    if method == "perfedavg":
        return train_perfedavg(model, work.loader, work.make_optimizer(model, None),
                               alpha=settings.inner_lr, epochs=work.epochs, device=work.device,
                               extra_loss=work.extra_loss)
    extra: dict[str, float] = {}
    if method == "ditto":
        with restored_afterwards(model):
            extra = train_personal(model, work.loader, work.make_optimizer, state=work.state,
                                   global_shared=work.global_shared, lam=settings.lam,
                                   epochs=settings.personal_epochs, device=work.device)
        model.to(work.device)
    # none and fedper (personal layers are simply not sent) train like FedAvg.
    return {**work.train_pass(model), **extra}


def evaluate_personal(settings: PersonalizationSettings, model: nn.Module,
                      train_loader: Iterable[Batch], val_loader: Iterable[Batch],
                      make_optimizer: MakeOptimizer, state: RecordDict,
                      global_result: Mapping[str, float], device: torch.device | str = "cpu"
                      ) -> dict[str, float]:
    """Personalized metrics of one client; `model` holds the received global model (with this
    client's local parameters) and `global_result` is its evaluation on `val_loader`."""
    metrics: dict[str, float] = {}
    if settings.adapt_steps > 0:
        metrics.update(adapted_evaluation(model, train_loader, val_loader, make_optimizer,
                                          steps=settings.adapt_steps, lr=settings.adapt_lr,
                                          device=device))
    if settings.has_personal_layers:  # the global body with the client's own layers
        personal = {"accuracy": global_result["accuracy"], "loss": global_result["loss"]}
    elif settings.method == "ditto":
        stored = load_personal_model(state)
        with restored_afterwards(model):
            if stored is not None:
                load_state(model, stored)
            personal = evaluate(model, val_loader, device=device)
    elif settings.method in META_METHODS or settings.adapt_steps > 0:
        personal = {"accuracy": metrics["adapted-accuracy"], "loss": metrics["adapted-loss"]}
    else:
        return metrics
    metrics.update({"personal-accuracy": personal["accuracy"], "personal-loss": personal["loss"]})
    return metrics


# Training metrics of the personalization methods that go into the client's reply.
REPLY_METRICS = ("head-steps", "body-steps", "head-loss", "body-loss", "personal-loss",
                 "personal-steps", "personal-proximal-term")


def reply_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The method-specific figures of `train_round`'s metrics, for the reply."""
    return {key: float(metrics[key]) for key in REPLY_METRICS if key in metrics}
