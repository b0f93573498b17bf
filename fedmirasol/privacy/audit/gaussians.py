"""Epsilon of two fitted Gaussians (Andrew et al. 2024, "One-shot empirical privacy estimation
for federated learning"): the scores of included canaries and of excluded ones are each
fitted with a normal distribution, and epsilon is the privacy loss of telling those two
distributions apart at the run's delta. An estimate, not a bound (its premise is that the
scores are Gaussian).

For P = N(mu_p, s_p^2) and Q = N(mu_q, s_q^2),
delta(eps) = P[L > eps] - e^eps Q[L > eps] with L = log p/q (the hockey-stick divergence);
{L > eps} is where a quadratic in x is positive, so both masses are normal tail masses. The
estimate is the smallest eps whose delta, taken both ways round, is at most the run's delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

EPSILON_CAP = 512.0  # beyond it the estimate is infinite (e^eps overflows near 709)


@dataclass(frozen=True)
class Gaussian:
    mean: float
    std: float

    @classmethod
    def fit(cls, values: Sequence[float]) -> "Gaussian":
        """Mean and (unbiased) standard deviation of at least two values."""
        data = np.asarray(values, dtype=np.float64)
        if data.size < 2 or not np.isfinite(data).all():
            raise ValueError("fitting a Gaussian needs at least two finite values")
        return cls(float(data.mean()), float(data.std(ddof=1)))

    def mass(self, low: float, high: float) -> float:
        """P[low < X < high]."""
        if high <= low:
            return 0.0
        a, b = (low - self.mean) / self.std, (high - self.mean) / self.std
        if a > 0:  # both in the upper tail: difference of survival functions is accurate
            return float(norm.sf(a) - norm.sf(b))
        return float(norm.cdf(b) - norm.cdf(a))


def _region(p: Gaussian, q: Gaussian, epsilon: float) -> list[tuple[float, float]]:
    """The intervals where log p(x)/q(x) > epsilon."""
    # log p/q = log(s_q/s_p) - (x - mu_p)^2 / 2 s_p^2 + (x - mu_q)^2 / 2 s_q^2 = a x^2 + b x + c
    a = 0.5 / q.std**2 - 0.5 / p.std**2
    b = p.mean / p.std**2 - q.mean / q.std**2
    c = (0.5 * q.mean**2 / q.std**2 - 0.5 * p.mean**2 / p.std**2
         + math.log(q.std / p.std) - epsilon)
    inf = math.inf
    if abs(a) < 1e-12 * (abs(b) + 1e-300) or a == 0:  # equal variances: a half-line
        if b == 0:
            return [(-inf, inf)] if c > 0 else []
        return [(-c / b, inf)] if b > 0 else [(-inf, -c / b)]
    disc = b * b - 4 * a * c
    if disc <= 0:
        return [(-inf, inf)] if a > 0 else []
    roots = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    return [(-inf, roots[0]), (roots[1], inf)] if a > 0 else [(roots[0], roots[1])]


def hockey_stick(p: Gaussian, q: Gaussian, epsilon: float) -> float:
    """delta(epsilon) of P against Q: sup over events S of P(S) - e^eps Q(S)."""
    if p.std <= 0 or q.std <= 0:
        raise ValueError("both Gaussians need a positive standard deviation")
    region = _region(p, q, epsilon)
    value = sum(p.mass(lo, hi) for lo, hi in region) \
        - math.exp(epsilon) * sum(q.mass(lo, hi) for lo, hi in region)
    return max(0.0, value)


def epsilon_of(p: Gaussian, q: Gaussian, delta: float) -> float:
    """The smallest epsilon >= 0 at which both P against Q and Q against P are within
    `delta`."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")

    def excess(epsilon: float) -> float:
        return max(hockey_stick(p, q, epsilon), hockey_stick(q, p, epsilon)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > EPSILON_CAP:  # e^eps would overflow: the Gaussians are told apart
            return math.inf
    return float(brentq(excess, 0.0, high, xtol=1e-9))


@dataclass(frozen=True)
class GaussianEstimate:
    epsilon: float
    included: Gaussian
    excluded: Gaussian

    def to_json(self) -> dict[str, float]:
        return {"epsilon-estimate": self.epsilon,
                "included-mean": self.included.mean, "included-std": self.included.std,
                "excluded-mean": self.excluded.mean, "excluded-std": self.excluded.std}


def estimate(included: Sequence[float], excluded: Sequence[float], delta: float
             ) -> GaussianEstimate:
    """Andrew et al.'s estimate from the scores of included and of excluded canaries."""
    p, q = Gaussian.fit(included), Gaussian.fit(excluded)
    if p.std == 0 or q.std == 0:
        raise ValueError("canary scores without spread: no Gaussian fits them")
    return GaussianEstimate(epsilon_of(p, q, delta), p, q)


__all__ = ["Gaussian", "GaussianEstimate", "epsilon_of", "estimate", "hockey_stick"]
