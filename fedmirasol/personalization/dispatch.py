"""The two entry points the client task calls: a round's local training and the personalized
evaluation, by `personalization.method` (the classes in registry.py).

`train_round` leaves the model holding what the client sends (its shared parameters, as a
delta from the received ones) and keeps (its local/personal parameters); Ditto's personal
model goes to the client's state on the side. `evaluate_personal` adds, per client, the
accuracy of its personalized model (and of the locally adapted model when adapt-steps > 0)
beside the global model's.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.config.personalization import PersonalizationConfig
from fedmirasol.data.batch import Batch
from fedmirasol.personalization.adaptation import Tune, adapted_evaluation
from fedmirasol.personalization.registry import LocalWork, method
from fedmirasol.personalization.trainable import MakeOptimizer


def train_round(settings: PersonalizationConfig, work: LocalWork) -> dict[str, float]:
    """One round of local work by method; returns the training metrics."""
    return method(settings).train_round(work)


def evaluate_personal(settings: PersonalizationConfig, model: nn.Module, tune: Tune,
                      val_loader: Iterable[Batch], make_optimizer: MakeOptimizer,
                      state: RecordDict, global_result: Mapping[str, float],
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """Personalized metrics of one client; `model` holds the received global model (with this
    client's local parameters) and `global_result` is its evaluation on `val_loader`; `tune`
    fine-tunes on the client's training data (DP-SGD under DP)."""
    metrics: dict[str, float] = {}
    adapted = None
    if settings.adapt_steps > 0:
        metrics.update(adapted_evaluation(model, tune, val_loader, make_optimizer,
                                          steps=settings.adapt_steps, lr=settings.adapt_lr,
                                          device=device))
        adapted = {"accuracy": metrics["adapted-accuracy"], "loss": metrics["adapted-loss"],
                   "num_examples": metrics["adapted-examples"]}
    personal = method(settings).personal_result(model, val_loader, state, global_result,
                                                adapted, device)
    if personal is not None:
        metrics.update({"personal-accuracy": personal["accuracy"],
                        "personal-loss": personal["loss"],
                        "personal-examples": personal["num_examples"]})
    return metrics


# Training metrics of the personalization methods that go into the client's reply.
REPLY_METRICS = ("head-steps", "body-steps", "head-loss", "body-loss", "personal-loss",
                 "personal-steps", "personal-proximal-term")


def reply_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The method-specific figures of `train_round`'s metrics, for the reply."""
    return {key: float(metrics[key]) for key in REPLY_METRICS if key in metrics}


__all__ = ["LocalWork", "evaluate_personal", "reply_metrics", "train_round"]
