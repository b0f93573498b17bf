"""The run config's ``[privacy]`` section: sample-level DP-SGD and client-level DP."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")
# ew (PyTorch expanded weights, the fastest exact mode on Mirasol) | hooks | functorch: the
# same per-sample gradients, clipping, noise and accounting (benchmarks/dp_overhead.py). Ghost
# clipping runs on Mirasol (benchmarks/ghost_clipping.py) but needs two backward passes, so it
# is benchmarked, not offered for training.
GRAD_SAMPLE_MODES = ("ew", "hooks", "functorch")


class PrivacyConfig(Section):
    """Sample-level DP-SGD (Opacus) on every client, optionally calibrated to a target epsilon
    and capped by a per-client budget; or client-level DP (each update clipped, Gaussian noise
    on the equal-weight mean of the sampled clients)."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0.0)  # sigma; calibrated when target-epsilon > 0
    max_grad_norm: float = Field(1.0, gt=0.0)  # per-sample L2 clip C
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    accountant: Literal[ACCOUNTANTS] = "rdp"  # type: ignore[valid-type]
    target_epsilon: float = Field(0.0, ge=0.0)  # > 0: calibrate sigma to end the run under it
    budget_epsilon: float = Field(0.0, ge=0.0)  # > 0: a client never trains past it
    # Poisson sampling rate q of each local step; 0: client.batch-size / the client's training
    # clips (client.batch-size is then the expected batch size).
    sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    grad_sample_mode: Literal[GRAD_SAMPLE_MODES] = "ew"  # type: ignore[valid-type]
    max_physical_batch_size: int = Field(0, ge=0)  # > 0: BatchMemoryManager splits batches
    client_level: bool = False  # FedAvg/FedProx/FedBN only
    client_clip_norm: float = Field(1.0, gt=0.0)  # L2 bound of a client's update
    client_noise_multiplier: float = Field(1.0, ge=0.0)  # z

    @model_validator(mode="after")
    def _check(self) -> "PrivacyConfig":
        for name, value in self.model_dump().items():
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"config key 'privacy.{name.replace('_', '-')}' is out of "
                                  f"range: {value!r}")
        if self.enabled and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ConfigError("config key 'privacy.noise-multiplier' is 0 with DP enabled: "
                              "that is no privacy; set it > 0 or set privacy.target-epsilon")
        if 0 < self.budget_epsilon < self.target_epsilon:
            raise ConfigError(f"config key 'privacy.budget-epsilon' ({self.budget_epsilon}) is "
                              f"below privacy.target-epsilon ({self.target_epsilon})")
        return self

    @property
    def budget(self) -> float:
        """The epsilon no client may exceed (inf when neither budget nor target is set)."""
        if self.budget_epsilon > 0:
            return self.budget_epsilon
        return self.target_epsilon if self.target_epsilon > 0 else math.inf

    @property
    def calibrated(self) -> bool:
        """True when each client derives sigma from target-epsilon."""
        return self.target_epsilon > 0
