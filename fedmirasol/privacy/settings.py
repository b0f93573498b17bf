"""The run config's ``[privacy]`` table as a validated, frozen value.

Sample-level DP-SGD (Opacus) on every client, optionally with a target epsilon that each
client calibrates its noise multiplier to, and a per-client budget it never trains past.
Client-level DP (each update clipped, Gaussian noise on the aggregate) is configured here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from fedmirasol.config.legacy import CHOICES, check_value
from fedmirasol.config.legacy import DEFAULTS as RUN_DEFAULTS

ACCOUNTANTS = CHOICES["privacy.accountant"]
# "ew" (expanded weights, fedmirasol.privacy.expanded_weights) is the fastest exact mode on
# Mirasol; ghost clipping runs (fedmirasol.privacy.ghost_clipping) but needs two backward
# passes, so it is benchmarked (benchmarks/dp_overhead.py), not offered for training.
GRAD_SAMPLE_MODES = CHOICES["privacy.grad-sample-mode"]

# The keys of the [privacy] table and their defaults (dashes, like every run-config key):
# the run config's own, so `fedmirasol simulate`, `flwr run` and this module agree.
DEFAULTS: dict[str, Any] = RUN_DEFAULTS["privacy"]


def _key(name: str) -> str:
    return f"privacy.{name}"


@dataclass(frozen=True)
class PrivacySettings:
    """Validated DP settings; build with `from_config` (a run config) or `from_table`."""

    enabled: bool = False
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float = 0.0
    budget_epsilon: float = 0.0
    sample_rate: float = 0.0
    grad_sample_mode: str = "ew"
    max_physical_batch_size: int = 0
    client_level: bool = False
    client_clip_norm: float = 1.0
    client_noise_multiplier: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            ("noise-multiplier", self.noise_multiplier >= 0),
            ("max-grad-norm", self.max_grad_norm > 0),
            ("delta", 0 < self.delta < 1),
            ("target-epsilon", self.target_epsilon >= 0),
            ("budget-epsilon", self.budget_epsilon >= 0),
            ("sample-rate", 0 <= self.sample_rate <= 1),
            ("max-physical-batch-size", self.max_physical_batch_size >= 0),
            ("client-clip-norm", self.client_clip_norm > 0),
            ("client-noise-multiplier", self.client_noise_multiplier >= 0),
        )
        for name, ok in checks:
            value = getattr(self, name.replace("-", "_"))
            if not ok or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"config key {_key(name)!r} is out of range: {value!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"config key {_key('accountant')!r} must be one of {ACCOUNTANTS}, "
                             f"got {self.accountant!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"config key {_key('grad-sample-mode')!r} must be one of "
                             f"{GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")
        if self.enabled and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ValueError(f"config key {_key('noise-multiplier')!r} is 0 with DP enabled: "
                             "that is no privacy; set it > 0 or set privacy.target-epsilon")
        if 0 < self.budget_epsilon < self.target_epsilon:
            raise ValueError(f"config key {_key('budget-epsilon')!r} ({self.budget_epsilon}) is "
                             f"below privacy.target-epsilon ({self.target_epsilon})")

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

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "PrivacySettings":
        """From a ``[privacy]`` table (dashed keys); unknown keys and bad types raise."""
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in DEFAULTS:
                raise KeyError(f"unknown config key {_key(key)!r}; privacy keys are: "
                               f"{', '.join(DEFAULTS)}")
            values[key.replace("-", "_")] = check_value(_key(key), value, DEFAULTS[key])
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PrivacySettings":
        """From a whole run config (its ``privacy`` table; DP off when there is none)."""
        return cls.from_table(config.get("privacy", {}))

    def to_table(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
