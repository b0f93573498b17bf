"""Local adaptation: fine-tune the received model for k steps on the client's training data,
then evaluate it (the weights are put back afterwards). Under DP the k steps are DP-SGD steps
charged to the client's accountant (the adapted model's figures leave the client)."""

from __future__ import annotations

import itertools
from typing import Callable, Iterable

import torch
from torch import nn

from fedmirasol.data.batch import Batch
from fedmirasol.personalization.trainable import MakeOptimizer, restored_afterwards
from fedmirasol.training.loop import evaluate, train_epochs

# (model, optimizer, steps) -> training metrics: exactly `steps` steps on the client's data
Tune = Callable[[nn.Module, torch.optim.Optimizer, int], dict[str, float]]


def fine_tune(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
              steps: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Exactly `steps` optimizer steps, cycling over `loader` as often as needed."""
    batches = itertools.islice(itertools.cycle(loader), steps)
    return train_epochs(model, list(batches), optimizer, epochs=1, device=device)


def adapted_evaluation(model: nn.Module, tune: Tune, val_loader: Iterable[Batch],
                       make_optimizer: MakeOptimizer, *, steps: int, lr: float,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and loss on `val_loader` after `steps` fine-tuning steps at `lr`."""
    with restored_afterwards(model):
        tuned = tune(model, make_optimizer(model, lr), steps)
        result = evaluate(model, val_loader, device=device)
        model.to("cpu")
    return {"adapted-accuracy": result["accuracy"], "adapted-loss": result["loss"],
            "adapt-train-loss": tuned["loss"], "adapted-examples": result["num_examples"]}
