"""One round of local DP-SGD with Opacus, on a model that comes out as clean as it went in.

Per-sample gradients come from PyTorch's expanded weights (`grad_sample_mode="ew"`, the
fastest on Mirasol: `fedmirasol.privacy.expanded_weights`) or from Opacus' `GradSampleModule`
(`hooks`, `functorch`); all three give the same per-sample gradients and feed the same
`DPOptimizer`, so the mode changes neither the released gradient nor the accounting. Each
round wraps the bare model afresh (``ew``: a functional call per batch, no wrapper) and
removes its hooks and per-sample attributes afterwards, so the same model object (the client
task reuses one per process) can be wrapped again next round without "Trying to add hooks
twice", and its state_dict never carries a ``_module.`` prefix. Batches are Poisson-sampled by Opacus'
`UniformWithReplacementSampler` (what the accountants assume; the sampler of its
`DPDataLoader`, whose empty-batch collation fails on dict samples when the first batch is
empty, so empty batches are collated here); `BatchMemoryManager` splits large ones.

Every optimizer step goes through Opacus' `DPOptimizer` (clip each sample's gradient, add
Gaussian noise, account the step), including steps whose Poisson batch is empty: there the
released gradient is pure noise, as the analysed mechanism prescribes, and the step is
accounted. A data-independent `extra_loss` (FedProx's proximal term) is differentiated
separately and added after the noise: it reads no example, so it costs no privacy.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from opacus import GradSampleModule
from opacus.accountants import IAccountant
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedmirasol.data.batch import collate, to_device
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.expanded_weights import ExpandedWeightsObjective
from fedmirasol.privacy.objective import per_sample_loss

ExtraLoss = Callable[[nn.Module], torch.Tensor]
PerSampleLosses = Callable[[Any], torch.Tensor]

# Ways to get per-sample gradients, fastest first (benchmarks/dp_overhead.py).
MODES = ("ew", "hooks", "functorch")


def _collate_or_empty(samples: list[Any]) -> Any:
    """`collate`, with an empty Poisson batch collated to an empty dict."""
    return collate(samples) if samples else {}


def poisson_loader(dataset: Dataset, sample_rate: float,
                   generator: torch.Generator | None = None) -> DataLoader:
    """int(1/q) batches, each holding every example independently with probability q."""
    sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=sample_rate,
                                            generator=generator)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate_or_empty)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping) and "label" in batch:
        return int(batch["label"].shape[0])
    return 0


def _fill_grad_samples(optimizer: DPOptimizer, batch_size: int) -> None:
    """Zero per-sample gradients for parameters the batch did not reach (or all, if empty)."""
    for p in optimizer.params:
        if getattr(p, "grad_sample", None) is None:
            p.grad_sample = torch.zeros((batch_size, *p.shape), dtype=p.dtype, device=p.device)


def _add_extra_gradient(model: nn.Module, optimizer: DPOptimizer, extra_loss: ExtraLoss) -> float:
    params = optimizer.params
    value = extra_loss(model)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    return float(value.detach())


def train_private(
    model: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    *,
    accountant: IAccountant,
    plan: SamplingPlan,
    epochs: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "ew",
    max_physical_batch_size: int = 0,
    extra_loss: ExtraLoss | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> dict[str, float]:
    """`epochs` passes of Poisson-sampled DP-SGD over `dataset`; every step is accounted in
    `accountant` (which keeps its earlier history). `optimizer` must hold the trainable
    parameters of `model`. `generator` draws the Poisson batches and `noise_generator` the
    Gaussian noise (None: torch's global generator). Returns the mean per-sample loss and the
    step counts."""
    if grad_sample_mode not in MODES:
        raise ValueError(f"grad-sample mode {grad_sample_mode!r} is not supported here")
    if epochs * int(1 / plan.sample_rate) != plan.steps:
        raise ValueError(f"plan of {plan.steps} steps does not match {epochs} epochs at "
                         f"sample rate {plan.sample_rate}")
    device = torch.device(device)
    losses_of, close = per_sample_losses(model, grad_sample_mode)
    try:
        dp_optimizer = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=max(1, int(len(dataset) * plan.sample_rate)),
            loss_reduction="mean",  # the noisy sum is divided by the expected batch size
            generator=noise_generator,
        )
        dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
        loader = poisson_loader(dataset, plan.sample_rate, generator)
        return _run_epochs(model, losses_of, dp_optimizer, loader, epochs=epochs,
                           max_physical_batch_size=max_physical_batch_size,
                           extra_loss=extra_loss, device=device)
    finally:
        close()  # removes the hooks and every grad_sample attribute


def per_sample_losses(model: nn.Module, mode: str) -> tuple[PerSampleLosses, Callable[[], None]]:
    """(batch -> ``B`` per-sample losses whose summed backward fills ``p.grad_sample``, a
    function that removes the hooks and per-sample attributes again) for `mode`."""
    if mode == "ew":
        objective = ExpandedWeightsObjective(model)
        return objective, objective.close
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum",
                               force_functorch=mode == "functorch")
    return (lambda batch: per_sample_loss(model, batch, wrapped(batch))), wrapped._close


def _run_epochs(model: nn.Module, losses_of: PerSampleLosses, optimizer: DPOptimizer,
                loader: DataLoader, *, epochs: int, max_physical_batch_size: int,
                extra_loss: ExtraLoss | None, device: torch.device) -> dict[str, float]:
    model.train()
    loss_sum = extra_sum = 0.0
    steps = empty_steps = examples = 0
    for _ in range(epochs):
        if max_physical_batch_size > 0:
            with BatchMemoryManager(data_loader=loader, optimizer=optimizer,
                                    max_physical_batch_size=max_physical_batch_size) as batches:
                counts = _steps(model, losses_of, optimizer, batches, extra_loss, device)
        else:
            counts = _steps(model, losses_of, optimizer, loader, extra_loss, device)
        loss_sum += counts[0]
        extra_sum += counts[1]
        steps += counts[2]
        empty_steps += counts[3]
        examples += counts[4]
    return {"loss": loss_sum / max(examples, 1), "loss_extra": extra_sum / max(steps, 1),
            "steps": float(steps), "empty_steps": float(empty_steps),
            "num_examples": float(examples)}


def _steps(model: nn.Module, losses_of: PerSampleLosses, optimizer: DPOptimizer, batches: Any,
           extra_loss: ExtraLoss | None, device: torch.device) -> tuple[float, float, int, int, int]:
    loss_sum = extra_sum = 0.0
    steps = empty_steps = examples = 0
    logical_size = 0
    for batch in batches:
        size = _batch_size(batch)
        if size > 0:
            batch = to_device(batch, device)
            losses = losses_of(batch)
            losses.sum().backward()
            loss_sum += float(losses.detach().sum())
            examples += size
        _fill_grad_samples(optimizer, size)
        logical_size += size
        if optimizer.pre_step():  # clip, noise, account (False: logical batch continues)
            if extra_loss is not None:
                extra_sum += _add_extra_gradient(model, optimizer, extra_loss)
            optimizer.original_optimizer.step()
            steps += 1
            empty_steps += logical_size == 0
            logical_size = 0
        optimizer.zero_grad(set_to_none=True)
    return loss_sum, extra_sum, steps, empty_steps, examples
