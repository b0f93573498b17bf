"""Figures that may leave a client under DP: noised sums of bounded per-sample values.

Each figure is a sum over samples of a value in [0, bound_k] (a clipped loss, a 0/1 count or
correctness). Adding or removing one sample moves the vector of K sums by at most
sqrt(K) after each sum is divided by its bound, so Gaussian noise of std
``noise_multiplier * sqrt(K) * bound_k`` on sum k makes the whole vector one Gaussian release
of that noise multiplier: one accountant step at the sampling rate of the samples it read.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from fedmirasol.data.batch import collate, to_device
from fedmirasol.privacy.objective import sample_losses
from fedmirasol.privacy.secure_noise import SecureNoise

NOISED_SUFFIX = "-noised"


def noised_sums(sums: Mapping[str, float], bounds: Mapping[str, float],
                noise_multiplier: float, noise: SecureNoise) -> dict[str, float]:
    """``{name + "-noised": sum + noise}``: one Gaussian release of the bounded sums."""
    if set(sums) != set(bounds):
        raise ValueError(f"every sum needs its bound: {sorted(sums)} vs {sorted(bounds)}")
    scale = noise_multiplier * math.sqrt(len(sums))
    draws = noise.normal_array(len(sums), 1.0)
    return {f"{name}{NOISED_SUFFIX}": float(sums[name] + scale * bounds[name] * draw)
            for name, draw in zip(sorted(sums), draws)}


def poisson_subset(dataset: Dataset, sample_rate: float, noise: SecureNoise) -> Subset:
    """Each sample of `dataset` independently with probability `sample_rate` (CSPRNG)."""
    chosen = noise.bernoulli(len(dataset), sample_rate).nonzero()[0].tolist()
    return Subset(dataset, chosen)


@torch.no_grad()
def loss_sums(model: nn.Module, dataset: Dataset, bound: float, batch_size: int,
              device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum of the per-sample losses (each clipped to [0, bound]) and the count, over `dataset`:
    the loss the model trains (an attached pre-training objective's, or Mirasol's)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=max(1, batch_size), collate_fn=collate):
        batch = to_device(batch, device)
        losses = sample_losses(model, batch)
        total += float(losses.clamp(0.0, bound).sum())
        count += int(losses.shape[0])
    model.train(was_training)
    return {"dp-loss-sum": total, "dp-count": float(count)}


def loss_bounds(bound: float) -> dict[str, float]:
    return {"dp-loss-sum": bound, "dp-count": 1.0}


def ratio(values: list[Mapping[str, float]], numerator: str, denominator: str) -> float | None:
    """sum(numerator) / sum(denominator) over clients (None when nothing is there or the
    noised denominator is not positive)."""
    top = [v[numerator] for v in values if numerator in v and denominator in v]
    bottom = [v[denominator] for v in values if numerator in v and denominator in v]
    if not top or sum(bottom) <= 0:
        return None
    return float(sum(top) / sum(bottom))
