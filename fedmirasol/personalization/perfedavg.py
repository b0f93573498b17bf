"""Per-FedAvg, first-order version (Fallah et al., 2020): learn a global model that one local
gradient step personalizes well.

Each local step takes two batches D and D': an inner step ``w' = w - alpha grad L_D(w)``, then
the gradient ``grad L_D'(w')`` at the adapted point, applied to the original w by the client's
optimizer (first order: the Hessian term of MAML is dropped). Clients are evaluated after
`adapt-steps` of local adaptation.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from fedmirasol.data.batch import Batch, to_device
from fedmirasol.models.loss import mirasol_loss
from fedmirasol.training.device import autocast
from fedmirasol.training.loop import ExtraLoss


def _pairs(loader: Iterable[Batch]) -> Iterator[tuple[Batch, Batch]]:
    batches = iter(loader)
    for first in batches:
        second = next(batches, None)
        if second is None:
            return
        yield first, second


def _gradients(model: nn.Module, params: list[nn.Parameter], batch: Batch,
               device: torch.device, extra_loss: ExtraLoss | None) -> tuple[list, float]:
    with autocast(device):
        loss, _ = mirasol_loss(model, to_device(batch, device))
    if extra_loss is not None:
        loss = loss + extra_loss(model)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return list(grads), float(loss.detach())


def train_perfedavg(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    *, alpha: float, epochs: int, device: torch.device | str = "cpu",
                    extra_loss: ExtraLoss | None = None) -> dict[str, float]:
    """`epochs` passes, one meta step per pair of consecutive batches; returns the mean loss
    at the adapted point (what the meta objective minimizes) and the step count."""
    device = torch.device(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, steps = 0.0, 0
    for _ in range(epochs):
        for inner, outer in _pairs(loader):
            origin = [p.detach().clone() for p in params]
            grads, _ = _gradients(model, params, inner, device, None)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.sub_(alpha * g)
            grads, loss = _gradients(model, params, outer, device, extra_loss)
            with torch.no_grad():
                for p, start, g in zip(params, origin, grads):
                    p.copy_(start)
                    p.grad = None if g is None else g.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss
            steps += 1
    if steps == 0:
        raise ValueError("per-fedavg needs at least two batches of local data")
    return {"loss": loss_sum / steps, "steps": float(steps)}
