"""The run config's ``secagg`` section as a validated, frozen value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

FIELD_BITS = 32  # masked sums live in Z_(2^32): numpy uint32 arithmetic wraps exactly there
WEIGHTINGS = ("examples", "equal")


@dataclass(frozen=True)
class SecAggSettings:
    """What the server and the clients agree on for secure aggregation."""

    enabled: bool = False
    reconstruction_fraction: float = 0.67  # t = ceil(fraction * share-group size)
    num_neighbours: int = 0  # SecAgg+ ring neighbours per client (0: every other client)
    bits: int = 16  # quantization: |x| <= range maps onto +-2^(bits-1) per unit weight
    range: float = 0.0  # bound of |update value| (0: the DP clip norm, else measured)
    weighting: str = "examples"  # examples: weight by num-examples; equal: every client 1

    def __post_init__(self) -> None:
        if not 0.5 < self.reconstruction_fraction <= 1.0:
            raise ValueError("config key 'secagg.reconstruction-fraction' must be in (0.5, 1] "
                             f"(a majority, so the server cannot unmask both ways), got "
                             f"{self.reconstruction_fraction!r}")
        if self.num_neighbours < 0 or self.num_neighbours == 1:
            raise ValueError("config key 'secagg.num-neighbours' must be 0 (all) or >= 2, got "
                             f"{self.num_neighbours!r}")
        if not 2 <= self.bits <= FIELD_BITS - 2:
            raise ValueError(f"config key 'secagg.bits' must be within [2, {FIELD_BITS - 2}], "
                             f"got {self.bits!r}")
        if not self.range >= 0 or math.isinf(self.range):
            raise ValueError(f"config key 'secagg.range' must be >= 0, got {self.range!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"config key 'secagg.weighting' must be one of {WEIGHTINGS}, "
                             f"got {self.weighting!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SecAggSettings":
        table = config.get("secagg", {})
        return cls(**{key.replace("-", "_"): value for key, value in table.items()})

    def threshold(self, group_size: int) -> int:
        """Shares needed to rebuild a secret shared among `group_size` holders."""
        return max(2, math.ceil(self.reconstruction_fraction * group_size - 1e-9))


def known_bound(config: Mapping[str, Any]) -> float | None:
    """The bound of every update value, if one is known: ``secagg.range`` when set, else the
    client-level DP clip norm (an L2 bound bounds every coordinate); None: measure it."""
    settings = SecAggSettings.from_config(config)
    if settings.range > 0:
        return settings.range
    privacy = config.get("privacy", {})
    if privacy.get("client-level", False):
        return float(privacy["client-clip-norm"])
    return None


def client_weighting(config: Mapping[str, Any]) -> str:
    """Equal weights under client-level DP (its noise is calibrated to an equal-weight mean)."""
    if config.get("privacy", {}).get("client-level", False):
        return "equal"
    return SecAggSettings.from_config(config).weighting
