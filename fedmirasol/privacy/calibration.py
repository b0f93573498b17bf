"""Poisson sampling plan of a client's round, and the noise multiplier for a target epsilon."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from fedmirasol.privacy.accountant_state import epsilon
from fedmirasol.privacy.release_log import History, accountant_of


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
                               steps: int, accountant: str, tolerance: float = 0.01,
                               fixed: History = ()) -> float:
    """The smallest noise multiplier (to `tolerance` in epsilon) whose epsilon after `steps`
    steps at rate `sample_rate`, composed with the `fixed` releases (e.g. DP evaluations at
    their own noise), is <= `target_epsilon`; checked again before it is returned."""
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"cannot calibrate for {steps} planned steps")
    if fixed:
        return _bisect(target_epsilon, delta, sample_rate, steps, accountant, tolerance,
                       list(fixed))
    try:
        from opacus.accountants.utils import get_noise_multiplier  # ~1 s: only under DP

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
                    accountant: str, fixed: History = ()) -> float:
    """Epsilon after `steps` steps of the subsampled Gaussian mechanism from scratch (and the
    `fixed` releases)."""
    return epsilon(accountant_of([(sigma, sample_rate, steps), *fixed], accountant), delta)


def _bisect(target: float, delta: float, sample_rate: float, steps: int, accountant: str,
            tolerance: float, fixed: History) -> float:
    with warnings.catch_warnings():
        # far above the answer (epsilon << 1) RDP's best order is its largest: it warns there
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha", UserWarning)
        return _search(target, delta, sample_rate, steps, accountant, tolerance, fixed)


def _search(target: float, delta: float, sample_rate: float, steps: int, accountant: str,
            tolerance: float, fixed: History) -> float:
    if planned_epsilon(1e6, sample_rate, steps, delta, accountant, fixed) > target:
        raise ValueError(f"no noise multiplier reaches epsilon {target} at delta {delta}: the "
                         "other releases alone (e.g. DP evaluation) spend more")
    low, high = 0.0, 1.0
    while planned_epsilon(high, sample_rate, steps, delta, accountant, fixed) > target:
        low, high = high, high * 2
    while True:  # invariant: epsilon(high) <= target
        middle = (low + high) / 2
        if planned_epsilon(middle, sample_rate, steps, delta, accountant, fixed) > target:
            low = middle
        else:
            high = middle
        if target - planned_epsilon(high, sample_rate, steps, delta, accountant, fixed) \
                < tolerance or high - low < 1e-6:
            return high
