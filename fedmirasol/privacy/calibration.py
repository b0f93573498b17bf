"""Poisson sampling plan of a client's round, and the noise multiplier for a target epsilon."""

from __future__ import annotations

import math
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

from fedmirasol.privacy.accountant_state import epsilon, new_accountant


@dataclass(frozen=True)
class SamplingPlan:
    """One round of local DP-SGD: each step samples every example with probability q."""

    sample_rate: float
    steps: int  # optimizer steps (= accountant steps) in one round

    @classmethod
    def for_round(cls, num_examples: int, batch_size: int, epochs: int,
                  sample_rate: float = 0.0) -> "SamplingPlan":
        """q = `sample_rate` when > 0, else batch_size / n (expected batch size = batch_size);
        int(1/q) steps an epoch, as Opacus' Poisson sampler takes them."""
        if num_examples < 1:
            raise ValueError("a client with no training examples cannot run DP-SGD")
        if batch_size < 1 or epochs < 1:
            raise ValueError(f"batch size ({batch_size}) and local epochs ({epochs}) must be >= 1")
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample rate must be within (0, 1], got {sample_rate}")
        q = sample_rate if sample_rate > 0 else min(1.0, batch_size / num_examples)
        return cls(sample_rate=q, steps=epochs * int(1 / q))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, accountant: str, tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (to `tolerance` in epsilon) whose epsilon after `steps`
    steps at rate `sample_rate` is <= `target_epsilon`; checked again before it is returned."""
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"cannot calibrate for {steps} planned steps")
    try:
        sigma = float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant, epsilon_tolerance=tolerance))
    except ValueError as error:
        raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta} "
                         f"over {steps} steps at sample rate {sample_rate:.4g}: {error}") from error
    achieved = planned_epsilon(sigma, sample_rate, steps, delta, accountant)
    while achieved > target_epsilon:  # never in the user's disfavour
        sigma = math.nextafter(sigma * 1.001, math.inf)
        achieved = planned_epsilon(sigma, sample_rate, steps, delta, accountant)
    return sigma


def planned_epsilon(sigma: float, sample_rate: float, steps: int, delta: float,
                    accountant: str) -> float:
    """Epsilon after `steps` steps of the subsampled Gaussian mechanism from scratch."""
    fresh = new_accountant(accountant)
    fresh.history = [(sigma, sample_rate, steps)]
    return epsilon(fresh, delta)
