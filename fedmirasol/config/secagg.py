"""The run config's ``[secagg]`` section: secure aggregation (SecAgg+)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

FIELD_BITS = 32  # masked sums live in Z_(2^32): numpy uint32 arithmetic wraps exactly there
WEIGHTINGS = ("examples", "equal")


class SecAggConfig(Section):
    """What the server and the clients agree on for secure aggregation: the server learns
    only the sum of the masked, quantized updates."""

    enabled: bool = False
    reconstruction_fraction: float = 0.67  # t = ceil(fraction * share-group size)
    num_neighbours: int = 0  # SecAgg+ ring neighbours per client (0: every other client)
    bits: int = 16  # quantization: |x| <= range maps onto +-2^(bits-1) per unit weight
    # the declared bound of every |update value| (a public rule: a client whose update exceeds
    # it sits the round out, named; under privacy.client-level the clip norm is the bound)
    range: float = 1.0
    weighting: Literal[WEIGHTINGS] = "examples"  # type: ignore[valid-type]
    # the fewest real contributors (clients with an update, in the share group and among the
    # survivors) an honest client accepts: the server learns nothing finer than a sum over them
    min_contributors: int = 3

    @model_validator(mode="after")
    def _check(self) -> "SecAggConfig":
        if not 0.5 < self.reconstruction_fraction <= 1.0:
            raise ConfigError("config key 'secagg.reconstruction-fraction' must be in (0.5, 1] "
                              "(a majority, so the server cannot unmask both ways), got "
                              f"{self.reconstruction_fraction!r}")
        if self.num_neighbours < 0 or self.num_neighbours == 1:
            raise ConfigError("config key 'secagg.num-neighbours' must be 0 (all) or >= 2, got "
                              f"{self.num_neighbours!r}")
        if self.min_contributors < 2:
            raise ConfigError("config key 'secagg.min-contributors' must be >= 2 (a sum over one "
                              f"client is that client's update), got {self.min_contributors!r}")
        if not 2 <= self.bits <= FIELD_BITS - 2:
            raise ConfigError(f"config key 'secagg.bits' must be within [2, {FIELD_BITS - 2}], "
                              f"got {self.bits!r}")
        if not self.range >= 0 or math.isinf(self.range):
            raise ConfigError(f"config key 'secagg.range' must be >= 0, got {self.range!r}")
        return self

    def threshold(self, group_size: int) -> int:
        """Shares needed to rebuild a secret shared among `group_size` holders."""
        return max(2, self.min_contributors,
                   math.ceil(self.reconstruction_fraction * group_size - 1e-9))
