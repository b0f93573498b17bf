"""Opacus' `DPOptimizer` with the same clipping, noise and scaling in fewer passes.

Every DP-SGD step of a client goes through this class (or `SecureDPOptimizer`, its subclass
with CSPRNG noise). The released gradient is the one Opacus computes (the same noise from the same
generator, the clipped sum equal to float rounding: tests/test_dp_optimizer.py): each row's per-sample gradient is clipped to
``max_grad_norm``, the rows are summed, Gaussian noise of std ``noise_multiplier *
max_grad_norm`` is added and the sum is divided by ``expected_batch_size``. What changes is
the cost on models with many parameter tensors (Mirasol's small config has 192):

- Opacus' `scale_grad` evaluates `accumulated_iterations`, itself a loop over every
  parameter, once per parameter (quadratic in the tensor count: 9 ms a step at 192 tensors);
  here it is evaluated once.
- The clipped sum is one vector-matrix product per tensor (``factors @ rows``) instead of an
  ``einsum`` that goes through a batched matmul; small tensors (biases, layer norms) are
  clipped side by side as one matrix.
- The noise is drawn without the zero tensor Opacus' `_generate_noise` allocates first and
  added to the clipped sums in place, in one ``_foreach_add_``.
- With a generator of its own (``generator=``, used for nothing else), the next step's noise
  is drawn on a worker thread while this step's forward and backward run
  (`fedmirasol.privacy.noise_ahead`): the same draws in the same order, off the step's path.
  Call `close` when training ends.

A parameter's ``grad_sample`` may also be `LinearRows` (the "bk" mode's Linear weights, kept
as inputs and output gradients): its norms and clipped sum come from it without forming the
rows.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed
from torch import nn

from fedmirasol.privacy.book_keeping import LinearRows
from fedmirasol.privacy.noise_ahead import NoiseAhead


# Plain per-sample rows of at most this many numbers a sample (biases, layer norms) are clipped
# side by side: one norm pass and one clipped sum for all of them (Mirasol small: 129 of its
# 192 parameter tensors), instead of two small operations each.
_JOINED_NUMEL = 4096


def _squared_norms(grad_sample: torch.Tensor | LinearRows) -> torch.Tensor:
    """The per-sample squared L2 norms of one parameter's per-sample gradients."""
    if isinstance(grad_sample, LinearRows):
        return grad_sample.squared_norms()
    return grad_sample.reshape(len(grad_sample), -1).norm(2, dim=-1).square()


def _weighted_sum(grad_sample: torch.Tensor | LinearRows, weights: torch.Tensor,
                  p: nn.Parameter) -> torch.Tensor:
    """``sum_i weights[i] * row_i`` in `p`'s shape and dtype."""
    if isinstance(grad_sample, LinearRows):
        return grad_sample.weighted_sum(weights.to(grad_sample.device)).to(p.dtype)
    rows = grad_sample.to(p.dtype)
    weights = weights.to(device=rows.device, dtype=p.dtype)
    return (weights @ rows.reshape(len(rows), p.numel())).view(rows.shape[1:])


class _JoinedRows:
    """Small plain per-sample rows of several parameters (all of one dtype and device, their
    parameters'), laid side by side as one ``B x total`` matrix."""

    def __init__(self, params: list[nn.Parameter], samples: list[torch.Tensor]) -> None:
        self.params = params
        self.rows = torch.cat([g.reshape(len(g), p.numel()) for p, g in zip(params, samples)],
                              dim=1)

    def squared_norms(self) -> torch.Tensor:
        """Each sample's squared norm over all the joined parameters."""
        return self.rows.square().sum(dim=1)

    def weighted_sums(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter, ``sum_i weights[i] * row_i`` in its shape (views of one tensor)."""
        summed = weights.to(device=self.rows.device, dtype=self.rows.dtype) @ self.rows
        return [part.view_as(p) for part, p in
                zip(summed.split([p.numel() for p in self.params]), self.params)]


def _joinable(p: nn.Parameter, grad_sample: Any) -> bool:
    return (isinstance(grad_sample, torch.Tensor) and p.numel() <= _JOINED_NUMEL
            and grad_sample.dtype == p.dtype and grad_sample.device == p.device)


class LeanDPOptimizer(DPOptimizer):
    """`DPOptimizer` whose clip, noise and scale steps take fewer passes (same results).
    `noise_ahead`: draw the next step's noise on a worker thread (only with a `generator`, which
    the worker then uses; Opacus' default, torch's global generator, is shared with the model)."""

    def __init__(self, *args: Any, noise_ahead: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._noise_ahead = (NoiseAhead(self._draw_noise, in_place=self._draws_in_place)
                             if noise_ahead and self._noise_is_own() else None)

    _draws_in_place = True  # `_draw_noise` can refill a used noise tensor

    def _noise_is_own(self) -> bool:
        """Whether nothing but this optimizer draws from its noise source."""
        return self.generator is not None and not self.secure_mode

    def _draw_noise(self, entry: Any, into: torch.Tensor | None = None) -> torch.Tensor:
        """One parameter's noise: `entry` is (std, shape, dtype, device); Opacus' draw without
        its unused zeros (in place into `into`: the same numbers from the same generator)."""
        std, shape, dtype, device = entry
        if into is not None:
            return into.normal_(mean=0, std=std, generator=self.generator)
        return torch.normal(mean=0, std=std, size=shape, device=device,
                            generator=self.generator, dtype=dtype)

    def _with_noise(self, std: float, use: Callable[[list[torch.Tensor]], None]) -> None:
        """`use(noise)` with this step's noise, one tensor per parameter (as `_draw_noise` draws
        it); `use` must not keep the tensors (they may be refilled)."""
        spec = [(std, tuple(p.summed_grad.shape), p.summed_grad.dtype, p.summed_grad.device)
                for p in self.params]  # the same every step: the draw ahead is used
        if self._noise_ahead is not None:
            self._noise_ahead.lend(spec, use)
        else:
            use([self._draw_noise(entry) for entry in spec])

    def wait_for_noise(self) -> None:
        """Block until the noise drawn ahead for the next step is ready (for timing)."""
        if self._noise_ahead is not None:
            self._noise_ahead.wait()

    def close(self) -> None:
        """Stop drawing ahead (the pending draw is discarded, never released)."""
        if self._noise_ahead is not None:
            self._noise_ahead.close()

    def _get_flat_grad_sample(self, p: torch.Tensor) -> Any:
        if isinstance(getattr(p, "grad_sample", None), LinearRows):
            return p.grad_sample
        return super()._get_flat_grad_sample(p)

    @property
    def accumulated_iterations(self) -> int:
        if any(isinstance(getattr(p, "grad_sample", None), LinearRows) for p in self.params):
            return 1  # book-keeping takes one backward pass per step
        return super().accumulated_iterations

    def clip_and_accumulate(self) -> None:
        params, samples = self.params, self.grad_samples  # (`params` is built at each access)
        small = [i for i, (p, g) in enumerate(zip(params, samples)) if _joinable(p, g)]
        kind = (params[small[0]].dtype, params[small[0]].device) if small else None
        joined_at = [i for i in small if (params[i].dtype, params[i].device) == kind]
        apart = sorted(set(range(len(samples))) - set(joined_at))
        joined = (_JoinedRows([params[i] for i in joined_at], [samples[i] for i in joined_at])
                  if joined_at else None)
        if len(samples[0]) == 0:  # an empty Poisson batch: nothing to clip
            factors = torch.zeros((0,), device=samples[0].device)
        else:
            squared = [_squared_norms(samples[i]) for i in apart]
            squared += [joined.squared_norms()] if joined is not None else []
            device = squared[0].device
            per_sample = torch.stack([n.to(device) for n in squared], dim=1).sum(dim=1).sqrt()
            factors = (self.max_grad_norm / (per_sample + 1e-6)).clamp(max=1.0)
        sums = {i: _weighted_sum(samples[i], factors, params[i]) for i in apart}
        if joined is not None:
            sums.update(zip(joined_at, joined.weighted_sums(factors)))
        for i, p in enumerate(params):
            _check_processed_flag(p.grad_sample)
            if p.summed_grad is not None:
                p.summed_grad += sums[i]
            else:
                p.summed_grad = sums[i]
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        params = self.params
        std = self.noise_multiplier * self.max_grad_norm
        summed = [p.summed_grad for p in params]
        for one in summed:
            _check_processed_flag(one)

        def add(noises: list[torch.Tensor]) -> None:
            if all(s.dtype == n.dtype for s, n in zip(summed, noises)):
                torch._foreach_add_(summed, noises)  # into the sums (a + b == b + a)
            else:
                summed[:] = [s + n for s, n in zip(summed, noises)]

        if std == 0 or self.secure_mode:  # Opacus' zeros / Opacus' own secure draws
            add([_generate_noise(std=std, reference=s, generator=self.generator,
                                 secure_mode=self.secure_mode) for s in summed])
        else:
            self._with_noise(std, add)
        for p, noised in zip(params, summed):
            p.grad = noised.view_as(p)
            _mark_as_processed(p.summed_grad)

    def scale_grad(self) -> None:
        if self.loss_reduction == "mean":
            divisor = self.expected_batch_size * self.accumulated_iterations
            torch._foreach_div_([p.grad for p in self.params], divisor)
