"""Which parameters an optimizer step may change: freeze all but a named set, then restore."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Collection, Iterator, Protocol

import torch
from torch import nn

from fedmirasol.core.parameters import NumpyState, canonical_name, load_state, model_state

# Builds an optimizer over the model's trainable parameters (lr: None = the client's lr).
MakeOptimizer = Callable[[nn.Module, "float | None"], torch.optim.Optimizer]


class TrainOnData(Protocol):
    """Training passes over the client's data: plain epochs, or DP-SGD (Poisson batches,
    clipped and noised, every step charged to the client's accountant)."""

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int = 1,
                 steps: int | None = None,
                 extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
                 ) -> dict[str, float]: ...


@contextmanager
def only_trainable(model: nn.Module, names: Collection[str]) -> Iterator[list[str]]:
    """Within the block only parameters named in `names` (state_dict names) require grad.

    Yields the names of the parameters left trainable; the original flags come back after.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        trainable = []
        for name, param in model.named_parameters():
            keep = flags[name] and canonical_name(name) in names
            param.requires_grad_(keep)
            if keep:
                trainable.append(canonical_name(name))
        yield trainable
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])


def full_state(model: nn.Module) -> NumpyState:
    """A copy of every state_dict entry (to put the model back after a side computation)."""
    return model_state(model, [canonical_name(k) for k in model.state_dict()])


@contextmanager
def restored_afterwards(model: nn.Module) -> Iterator[None]:
    """Whatever the block does to the model's weights is undone when it ends."""
    saved = full_state(model)
    try:
        yield
    finally:
        load_state(model, saved)
