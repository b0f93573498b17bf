"""The run config's ``[secagg]`` section: secure aggregation (SecAgg+)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

# Masked sums live in Z_(2^32) or Z_(2^64) (numpy's uint32/uint64 arithmetic wraps exactly
# there): the narrowest that holds the round's largest possible sum (`SecAggConfig.field_bits`).
FIELD_WIDTHS = (32, 64)
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
        if not 2 <= self.bits <= 30:
            raise ConfigError(f"config key 'secagg.bits' must be within [2, 30], got "
                              f"{self.bits!r}")
        if not self.range >= 0 or math.isinf(self.range):
            raise ConfigError(f"config key 'secagg.range' must be >= 0, got {self.range!r}")
        return self

    def threshold(self, group_size: int) -> int:
        """Shares needed to rebuild a secret shared among `group_size` holders."""
        return max(2, self.min_contributors,
                   math.ceil(self.reconstruction_fraction * group_size - 1e-9))

    def field_bits(self, max_weight: int, clients: int) -> int:
        """Width of the sum field for `clients` updates of weight <= `max_weight` at
        `bits` (`sum_field_bits`)."""
        return sum_field_bits(self.bits, max_weight, clients)


def sum_field_bits(bits: int, max_weight: int, clients: int) -> int:
    """Width of the sum field for `clients` updates of weight <= `max_weight` quantized to
    `bits`: each quantized value is within +-(weight x 2^(bits-1)) (+1 for rounding), so the
    sum's magnitude stays below clients x (max_weight x 2^(bits-1) + 1), which the signed field
    must hold. Raises `ConfigError` naming the keys when even 64 bits cannot."""
    largest = clients * (max_weight * 2 ** (bits - 1) + 1)
    for width in FIELD_WIDTHS:
        if largest < 2 ** (width - 1):
            return width
    raise ConfigError(
        f"a secure sum of {clients} clients with weights up to {max_weight} "
        f"(strategy.max-num-examples) at secagg.bits = {bits} needs "
        f"{math.log2(largest) + 1:.1f} bits, more than the {FIELD_WIDTHS[-1]}-bit field: "
        "lower secagg.bits or strategy.max-num-examples (or use secagg.weighting = 'equal')")
