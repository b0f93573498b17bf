"""LeanDPOptimizer releases what Opacus' DPOptimizer releases: the same clipped, noised,
scaled gradient from the same generator, for full, empty and accumulated batches."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from fedmirasol.privacy.dp_optimizer import LeanDPOptimizer


def _model(dtype: torch.dtype = torch.float32, last: torch.dtype | None = None) -> nn.Module:
    """Small tensors only (clipped side by side); `last`: the last layer's dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    return model if last is None else model[:2].append(model[2].to(last))


def _set_grad_samples(model: nn.Module, batch: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        # rows of very different norms: some clipped, some not
        scale = torch.logspace(-2, 1, batch, dtype=p.dtype).view(-1, *([1] * p.dim()))
        p.grad_sample = scale * torch.randn((batch, *p.shape), generator=generator,
                                            dtype=p.dtype)


def _released(optimizer_class: type[DPOptimizer], *, batches: list[int], noise: float,
              dtype: torch.dtype = torch.float32,
              last: torch.dtype | None = None) -> list[torch.Tensor]:
    model = _model(dtype, last)
    optimizer = optimizer_class(torch.optim.SGD(model.parameters(), lr=0.1),
                                noise_multiplier=noise, max_grad_norm=0.7,
                                expected_batch_size=4, loss_reduction="mean",
                                generator=torch.Generator().manual_seed(7))
    for index, size in enumerate(batches):
        _set_grad_samples(model, size, seed=index)
        last = index == len(batches) - 1
        optimizer.signal_skip_step(do_skip=not last)  # a logical batch split in physical ones
        stepped = optimizer.pre_step()
        assert stepped == last
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("batches", [[4], [0], [3, 5], [0, 6]])
@pytest.mark.parametrize("noise", [0.0, 1.3])
def test_release_equals_opacus(batches: list[int], noise: float) -> None:
    ours = _released(LeanDPOptimizer, batches=batches, noise=noise)
    opacus = _released(DPOptimizer, batches=batches, noise=noise)
    for mine, reference in zip(ours, opacus):
        assert mine.dtype == reference.dtype and mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)


def _released_from_two_backwards(optimizer_class: type[DPOptimizer]) -> list[torch.Tensor]:
    """Per-sample gradients kept as a list (two backward passes before one step, Opacus'
    accumulation): the rows are concatenated and the sum divided by 2 x the batch size."""
    model = _model()
    optimizer = optimizer_class(torch.optim.SGD(model.parameters(), lr=0.1),
                                noise_multiplier=0.8, max_grad_norm=0.7, expected_batch_size=4,
                                loss_reduction="mean", generator=torch.Generator().manual_seed(3))
    _set_grad_samples(model, 4, seed=0)
    first = [p.grad_sample for p in model.parameters()]
    _set_grad_samples(model, 3, seed=1)
    for p, earlier in zip(model.parameters(), first):
        p.grad_sample = [earlier, p.grad_sample]
    assert optimizer.accumulated_iterations == 2
    optimizer.pre_step()
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_backwards_release_what_opacus_releases() -> None:
    for mine, reference in zip(_released_from_two_backwards(LeanDPOptimizer),
                               _released_from_two_backwards(DPOptimizer)):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)


def test_release_equals_opacus_in_float64() -> None:
    ours = _released(LeanDPOptimizer, batches=[4], noise=1.0, dtype=torch.float64)
    opacus = _released(DPOptimizer, batches=[4], noise=1.0, dtype=torch.float64)
    for mine, reference in zip(ours, opacus):
        assert mine.dtype == torch.float64
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


def test_release_equals_opacus_with_tensors_of_two_dtypes() -> None:
    """Small tensors of different dtypes are not clipped side by side in one matrix."""
    ours = _released(LeanDPOptimizer, batches=[4], noise=1.0, last=torch.float64)
    opacus = _released(DPOptimizer, batches=[4], noise=1.0, last=torch.float64)
    assert [t.dtype for t in ours] == [torch.float32] * 2 + [torch.float64] * 2
    for mine, reference in zip(ours, opacus):
        assert mine.dtype == reference.dtype
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)


def test_clipping_bounds_each_row() -> None:
    """Without noise, one row of huge norm moves the sum by at most the clip norm."""
    model = _model()
    optimizer = LeanDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                noise_multiplier=0.0, max_grad_norm=0.7,
                                expected_batch_size=1, loss_reduction="sum")
    for p in model.parameters():
        p.grad_sample = torch.full((1, *p.shape), 1e3)
    optimizer.pre_step()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm == pytest.approx(0.7, rel=1e-5)
