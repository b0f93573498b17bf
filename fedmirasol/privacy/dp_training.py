"""One round of local DP-SGD with Opacus, on a model that comes out as clean as it went in.

Per-sample gradients come from PyTorch's expanded weights (`grad_sample_mode="ew"`:
`fedmirasol.privacy.expanded_weights`; ``bk``, the default, the same with Linear weights kept
as inputs and output gradients: `fedmirasol.privacy.book_keeping`) or from Opacus'
`GradSampleModule` (`hooks`, `functorch`); all give the same per-sample gradients (norms and
clipped sums) and feed the same `DPOptimizer`, so the mode changes neither the released
gradient nor the accounting. Each round wraps the bare model afresh (``bk``/``ew``: a
functional call per batch, no wrapper) and
removes its hooks and per-sample attributes afterwards, so the same model object (the client
task reuses one per process) can be wrapped again next round without "Trying to add hooks
twice", and its state_dict never carries a ``_module.`` prefix. `BatchMemoryManager` splits
large batches.

Batches are Poisson-sampled (what the accountants assume; empty batches are collated here)
from a CSPRNG (`SecureNoise`) and the noise is drawn from it in
float64 and added to the float64 sum of the clipped gradients (`SecureDPOptimizer`; each
step's noise drawn on a worker thread while that step's forward and backward run,
`fedmirasol.privacy.noise_ahead`); a test or benchmark may pass seeded torch generators
instead. With ``groups`` (privacy.unit =
"user") a step samples *users*, takes at most `clips_per_user` of each sampled user's clips,
and clips each user's mean gradient as one row: the released gradient then bounds a user's
whole contribution, and the accountant's sample rate is the users' rate.

Every optimizer step goes through Opacus' `DPOptimizer` (clip each row's gradient, add
Gaussian noise, account the step), including steps whose Poisson batch is empty: there the
released gradient is pure noise, as the analysed mechanism prescribes, and the step is
accounted. A data-independent `extra_loss` (FedProx's proximal term) is differentiated
separately and added after the noise: it reads no example, so it costs no privacy.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import IAccountant
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedmirasol.data.batch import collate, to_device
from fedmirasol.models.objectives import objective_of
from fedmirasol.privacy.book_keeping import per_sample_rows
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_optimizer import LeanDPOptimizer
from fedmirasol.privacy.expanded_weights import ExpandedWeightsObjective
from fedmirasol.privacy.objective import sample_losses
from fedmirasol.privacy.secure_noise import SecureNoise

ExtraLoss = Callable[[nn.Module], torch.Tensor]
PerSampleLosses = Callable[[Any], torch.Tensor]

# Ways to get per-sample gradients, the default first (benchmarks/dp_overhead.py).
MODES = ("bk", "ew", "hooks", "functorch")


class _Indexed(Dataset):
    """`dataset` whose items are (index, sample), so a batch knows which clips it holds."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def _collate_indexed(items: list[tuple[int, Any]]) -> tuple[list[int], Any]:
    """(indices, batch), with an empty Poisson batch collated to an empty dict."""
    return [index for index, _ in items], collate([s for _, s in items]) if items else {}


class SecurePoissonSampler:
    """int(1/q) batches, each holding every example (or, with `groups`, every user: at most
    `clips_per_user` of its clips, drawn at random) independently with probability q, drawn
    from a CSPRNG; `generator` (a seeded torch generator) makes it repeatable for tests."""

    def __init__(self, num_samples: int, sample_rate: float, *, noise: SecureNoise | None,
                 generator: torch.Generator | None = None,
                 groups: Sequence[int] | None = None, clips_per_user: int = 1) -> None:
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.noise = noise if generator is None else None
        self.generator = generator
        self.steps = int(1 / sample_rate)
        self.members: list[np.ndarray] | None = None
        if groups is not None:
            ids = np.asarray(groups)
            self.members = [np.flatnonzero(ids == user) for user in np.unique(ids)]
        self.clips_per_user = clips_per_user

    def _uniform(self, count: int) -> np.ndarray:
        if self.generator is not None:
            return torch.rand(count, generator=self.generator, dtype=torch.float64).numpy()
        assert self.noise is not None
        return self.noise.uniform(count)

    def __len__(self) -> int:
        return self.steps

    def draw(self) -> list[int]:
        """One Poisson batch."""
        if self.members is None:
            return np.flatnonzero(self._uniform(self.num_samples) < self.sample_rate).tolist()
        chosen = np.flatnonzero(self._uniform(len(self.members)) < self.sample_rate)
        indices: list[int] = []
        for user in chosen:
            clips = self.members[user]
            if len(clips) > self.clips_per_user:  # a random k of them
                clips = clips[np.argsort(self._uniform(len(clips)))[:self.clips_per_user]]
            indices.extend(int(i) for i in clips)
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.draw()


def poisson_loader(dataset: Dataset, sample_rate: float,
                   generator: torch.Generator | None = None, *,
                   noise: SecureNoise | None = None, groups: Sequence[int] | None = None,
                   clips_per_user: int = 1) -> DataLoader:
    """int(1/q) Poisson batches of (indices, batch); from a CSPRNG unless `generator`."""
    if generator is None and noise is None:
        noise = SecureNoise()
    sampler = SecurePoissonSampler(len(dataset), sample_rate, noise=noise, generator=generator,
                                   groups=groups, clips_per_user=clips_per_user)
    return DataLoader(_Indexed(dataset), batch_sampler=sampler, collate_fn=_collate_indexed)


class SecureDPOptimizer(LeanDPOptimizer):
    """`LeanDPOptimizer` (Opacus' DPOptimizer) whose noise comes from `SecureNoise` in float64
    and is added to the float64 sum of the clipped gradients (rounded to the parameter's
    dtype afterwards)."""

    def __init__(self, *args: Any, noise: SecureNoise, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secure_noise = noise

    _draws_in_place = False

    def _noise_is_own(self) -> bool:
        return True  # a CSPRNG: the sampler's draws beside the worker's take nothing from it

    def _draw_noise(self, entry: Any, into: torch.Tensor | None = None) -> torch.Tensor:
        std, shape, _, device = entry  # float64 from numpy: always a new tensor
        return self.secure_noise.normal(shape, std, device=device)

    def add_noise(self) -> None:
        params = self.params
        std = self.noise_multiplier * self.max_grad_norm

        def add(noises: list[torch.Tensor]) -> None:
            for p, noise in zip(params, noises):
                summed = p.summed_grad
                _check_processed_flag(summed)
                p.grad = noise.add_(summed).to(summed.dtype).view_as(p)
                _mark_as_processed(summed)

        self._with_noise(std, add)


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
    grad_sample_mode: str = "bk",
    max_physical_batch_size: int = 0,
    extra_loss: ExtraLoss | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    steps: int | None = None,
    groups: Sequence[int] | None = None,
    clips_per_user: int = 1,
    noise: SecureNoise | None = None,
) -> dict[str, float]:
    """`epochs` passes (or exactly `steps` steps) of Poisson-sampled DP-SGD over `dataset`;
    every step is accounted in `accountant` (which keeps its earlier history). `optimizer`
    must hold the trainable parameters of `model`. Batches and noise come from `noise` (a
    fresh `SecureNoise` when None); `generator` / `noise_generator` (seeded torch generators)
    replace them where a test needs repeatable draws. `groups` (a user id per example): the
    unit is the user, and `plan.sample_rate` its rate. Returns the mean per-sample loss and
    the step counts."""
    if grad_sample_mode not in MODES:
        raise ValueError(f"grad-sample mode {grad_sample_mode!r} is not supported here")
    per_epoch = int(1 / plan.sample_rate)
    if steps is None and epochs * per_epoch != plan.steps:
        raise ValueError(f"plan of {plan.steps} steps does not match {epochs} epochs at "
                         f"sample rate {plan.sample_rate}")
    if groups is not None and max_physical_batch_size > 0:
        raise ValueError("user-level batches cannot be split (max-physical-batch-size)")
    if noise_generator is not None and noise_generator is generator:
        raise ValueError("generator and noise_generator must be two generators: the noise is "
                         "drawn on a worker thread while the batches are drawn")
    total = epochs * per_epoch if steps is None else steps
    device = torch.device(device)
    noise = noise or SecureNoise()
    units = len(set(groups)) if groups is not None else len(dataset)
    if (objective := objective_of(model)) is not None:
        objective.before_training(model)  # before any per-sample wrapper (public negatives)
    losses_of, close = per_sample_losses(model, grad_sample_mode)
    try:
        settings = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                        # the noisy sum is divided by the expected number of rows
                        expected_batch_size=max(1, int(units * plan.sample_rate)),
                        loss_reduction="mean")
        dp_optimizer = (LeanDPOptimizer(optimizer, generator=noise_generator, **settings)
                        if noise_generator is not None
                        else SecureDPOptimizer(optimizer, noise=noise, **settings))
        dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
        loader = poisson_loader(dataset, plan.sample_rate, generator, noise=noise,
                                groups=groups, clips_per_user=clips_per_user)
        rows = None if groups is None else np.asarray(groups)
        try:
            return _run_steps(model, losses_of, dp_optimizer, loader, steps=total,
                              max_physical_batch_size=max_physical_batch_size,
                              extra_loss=extra_loss, device=device, groups=rows)
        finally:
            dp_optimizer.close()  # the noise drawn ahead for a step not taken is discarded
    finally:
        close()  # removes the hooks and every grad_sample attribute


def per_sample_losses(model: nn.Module, mode: str) -> tuple[PerSampleLosses, Callable[[], None]]:
    """(batch -> ``B`` per-sample losses whose summed backward fills ``p.grad_sample``, a
    function that removes the hooks and per-sample attributes again) for `mode`."""
    if mode in ("bk", "ew"):
        objective = ExpandedWeightsObjective(model, book_keeping=mode == "bk")
        return objective, objective.close
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum",
                               force_functorch=mode == "functorch")
    # The wrapper's forward is the model's; its hooks sit on the model's modules, which also
    # catch the ones the loss calls directly (the text decoder, an objective's).
    return (lambda batch: sample_losses(model, batch)), wrapped._close


def _run_steps(model: nn.Module, losses_of: PerSampleLosses, optimizer: DPOptimizer,
               loader: DataLoader, *, steps: int, max_physical_batch_size: int,
               extra_loss: ExtraLoss | None, device: torch.device,
               groups: np.ndarray | None) -> dict[str, float]:
    """Passes over `loader` (each int(1/q) logical batches) until `steps` steps are taken."""
    model.train()
    totals = np.zeros(5)  # loss sum, extra sum, steps, empty steps, examples
    while totals[2] < steps:
        if max_physical_batch_size > 0:
            with BatchMemoryManager(data_loader=loader, optimizer=optimizer,
                                    max_physical_batch_size=max_physical_batch_size) as batches:
                totals += _steps(model, losses_of, optimizer, batches, extra_loss, device,
                                 groups, steps - int(totals[2]))
        else:
            totals += _steps(model, losses_of, optimizer, loader, extra_loss, device, groups,
                             steps - int(totals[2]))
    loss_sum, extra_sum, taken, empty_steps, examples = totals
    return {"loss": loss_sum / max(examples, 1), "loss_extra": extra_sum / max(taken, 1),
            "steps": float(taken), "empty_steps": float(empty_steps),
            "num_examples": float(examples)}


def _per_user_rows(optimizer: DPOptimizer, users: np.ndarray) -> int:
    """Replace each parameter's per-sample gradients by one row per user: the mean over the
    user's clips in the batch (so clipping bounds the user's whole contribution)."""
    ids, rows = np.unique(users, return_inverse=True)
    for p in optimizer.params:
        grad_sample = per_sample_rows(p.grad_sample)
        index = torch.as_tensor(rows, device=grad_sample.device)
        summed = torch.zeros((len(ids), *grad_sample.shape[1:]), dtype=grad_sample.dtype,
                             device=grad_sample.device).index_add_(0, index, grad_sample)
        counts = torch.bincount(index, minlength=len(ids)).to(grad_sample.dtype)
        p.grad_sample = summed / counts.view(-1, *([1] * (grad_sample.dim() - 1)))
    return len(ids)


def _steps(model: nn.Module, losses_of: PerSampleLosses, optimizer: DPOptimizer, batches: Any,
           extra_loss: ExtraLoss | None, device: torch.device, groups: np.ndarray | None,
           limit: int) -> np.ndarray:
    loss_sum = extra_sum = 0.0
    steps = empty_steps = examples = 0
    logical_size = 0
    for indices, batch in batches:
        if steps >= limit:
            break
        size = _batch_size(batch)
        if size > 0:
            batch = to_device(batch, device)
            losses = losses_of(batch)
            losses.sum().backward()
            loss_sum += float(losses.detach().sum())
            examples += size
        _fill_grad_samples(optimizer, size)
        if size > 0 and groups is not None:
            _per_user_rows(optimizer, groups[indices])
        logical_size += size
        if optimizer.pre_step():  # clip, noise, account (False: logical batch continues)
            if extra_loss is not None:
                extra_sum += _add_extra_gradient(model, optimizer, extra_loss)
            optimizer.original_optimizer.step()
            steps += 1
            empty_steps += logical_size == 0
            logical_size = 0
        optimizer.zero_grad(set_to_none=True)
    return np.array([loss_sum, extra_sum, steps, empty_steps, examples], dtype=np.float64)
