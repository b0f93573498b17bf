"""Per-FedAvg, first-order version (Fallah et al., 2020): learn a global model that one local
gradient step personalizes well.

Each local step takes two batches D and D': an inner step ``w' = w - alpha grad L_D(w)``, then
the gradient ``grad L_D'(w')`` at the adapted point, applied to the original w by the client's
optimizer (first order: the Hessian term of MAML is dropped). Clients are evaluated after
`adapt-steps` of local adaptation. Under DP both gradients of a meta step are DP-SGD steps on
their own Poisson batches (`train_perfedavg_private`), so a meta step costs two accounted steps.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from fedmirasol.data.batch import Batch, to_device
from fedmirasol.models.loss import mirasol_loss
from fedmirasol.personalization.trainable import TrainOnData
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


class _Capture(torch.optim.Optimizer):
    """An "optimizer" whose step keeps the (noised) gradients instead of applying them."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__(params, {})
        self.grads: list[torch.Tensor | None] = []

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001
        self.grads = [None if p.grad is None else p.grad.detach().clone()
                      for group in self.param_groups for p in group["params"]]


def train_perfedavg_private(model: nn.Module, train: TrainOnData,
                            optimizer: torch.optim.Optimizer, *, alpha: float, meta_steps: int,
                            extra_loss: ExtraLoss | None = None) -> dict[str, float]:
    """`meta_steps` first-order Per-FedAvg steps under DP: the inner step is one DP-SGD step
    with SGD at `alpha`; the outer gradient is one DP-SGD step's noised gradient at the
    adapted point, applied to the original weights by `optimizer`."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = 0.0
    for _ in range(meta_steps):
        origin = [p.detach().clone() for p in params]
        train(model, torch.optim.SGD(params, lr=alpha), steps=1)
        capture = _Capture(params)
        outer = train(model, capture, steps=1, extra_loss=extra_loss)
        with torch.no_grad():
            for p, start, g in zip(params, origin, capture.grads):
                p.copy_(start)
                p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += outer["loss"]
    return {"loss": loss_sum / max(meta_steps, 1), "steps": float(2 * meta_steps)}
