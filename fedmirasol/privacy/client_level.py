"""Client-level (user-level) DP: clip each client's update, noise the aggregate, account.

The mechanism (DP-FedAvg, McMahan et al. 2018, Flower's client-side fixed clipping): each
sampled client scales its update (a delta of the shared parameters) to L2 norm <= C; the
server averages the m clipped updates with equal weights and adds N(0, (z*C/m)^2) to every
coordinate. Flower's clipping helpers clip; the noise comes from a CSPRNG (`SecureNoise`) in
float64 and is added to the float64 mean (Flower's helper draws from numpy's global
generator into float32).

Accounting uses Flower's `RdpAccountant` (Google's dp-accounting underneath). Flower samples
a fixed number m of the N clients without replacement, so the release is analysed as
sampling without replacement with "replace one client" neighbours. Replacing one client
moves the sum of clipped updates by up to 2C, so each round is a Gaussian release with
noise multiplier (z*C)/(2C) = z/2 relative to that sensitivity.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, RdpAccountant
from flwr.supercore.differential_privacy import clip_inputs_inplace, compute_stdv, get_norm
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

from fedmirasol.privacy.secure_noise import SecureNoise

NumpyState = dict[str, np.ndarray]


def clip_update(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[NumpyState, float]:
    """A copy of `update` scaled to L2 norm <= `clip_norm` (over all arrays), and the norm
    it had before clipping."""
    if clip_norm <= 0:
        raise ValueError(f"client clip norm must be > 0, got {clip_norm}")
    names = list(update)
    arrays = [np.array(update[name], dtype=np.float32, copy=True) for name in names]
    norm = get_norm(arrays)
    if not np.isfinite(norm):
        raise ValueError("the update holds non-finite values; it cannot be clipped")
    if norm > 0:
        clip_inputs_inplace(arrays, clip_norm)
    return dict(zip(names, arrays)), norm


def noise_std(clip_norm: float, noise_multiplier: float, num_sampled: int) -> float:
    """Per-coordinate std of the noise on the mean of `num_sampled` clipped updates."""
    if num_sampled < 1:
        raise ValueError("client-level DP needs at least one sampled client")
    return compute_stdv(noise_multiplier, clip_norm, num_sampled)


def noise_share_std(clip_norm: float, noise_multiplier: float, min_contributors: int) -> float:
    """Per-coordinate std of one client's share of distributed client-level noise (homomorphic
    encryption: nobody sees the sum before it is noised). Any `min_contributors` - 1 shares
    sum to N(0, (z*C)^2), the central mechanism's noise on the sum of the clipped updates, so a
    sum of at least `min_contributors` updates carries that noise even for a client that knows
    (and removes) its own share, and the release is accounted as the central one."""
    if min_contributors < 2:
        raise ValueError(f"distributed noise needs at least 2 contributors, got "
                         f"{min_contributors}")
    return noise_multiplier * clip_norm / math.sqrt(min_contributors - 1)


def noise_aggregate(aggregate: Mapping[str, np.ndarray], *, clip_norm: float,
                    noise_multiplier: float, num_sampled: int,
                    noise: SecureNoise | None = None) -> NumpyState:
    """The equal-weight mean of clipped updates plus calibrated Gaussian noise, in float64
    (a copy; the caller rounds the new model to its dtype after adding it)."""
    noise = noise or SecureNoise()
    std = noise_std(clip_norm, noise_multiplier, num_sampled)
    return {name: np.asarray(value, dtype=np.float64) + noise.normal_array(np.shape(value), std)
            for name, value in aggregate.items()}


class ClientLevelAccountant:
    """Cumulative client-level epsilon of the run's noised aggregates."""

    def __init__(self, num_clients: int, delta: float) -> None:
        self._accountant = RdpAccountant(PrivacyConfig(
            target_delta=delta, population_size=num_clients,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
        ))
        self.delta = delta

    @property
    def releases(self) -> int:
        return self._accountant.num_releases

    def record_round(self, noise_multiplier: float, num_sampled: int,
                     population: int | None = None) -> float:
        """Compose one noised aggregate of `num_sampled` clients drawn from `population`
        (default: all clients); the cumulative epsilon.

        When clients out of their budget leave the draw, the population shrinks and the
        sampling rate grows. Flower's accountant keeps one population, so the round is
        composed as ceil(m N / population) of the N clients: a rate at least the real one
        (amplification only weakens as the rate grows), never in the user's favour.
        """
        total = self._accountant.config.population_size
        population = total if population is None else population
        if not 1 <= num_sampled <= population <= total:
            raise ValueError(f"cannot sample {num_sampled} of {population} clients "
                             f"(of {total})")
        sample_size = min(total, math.ceil(num_sampled * total / population))
        self._accountant.compose(GaussianPrivacyEvent(
            noise_multiplier=noise_multiplier / 2,  # sensitivity 2C under replace-one
            sample_size=sample_size, population_size=total))
        return self.epsilon()

    def epsilon(self) -> float:
        if self.releases == 0:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (for the run directory; a resumed server continues from it)."""
        return self._accountant.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._accountant.load_state_dict(state)
