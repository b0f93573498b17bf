"""Float updates <-> integers in Z_(2^32), without silent clipping.

A client maps each value x (|x| <= bound) of its update, times its integer weight w, to the
integer ``floor(w * x * scale + u)``, u ~ U[0, 1) (stochastic rounding: unbiased), with
``scale = 2^(bits-1) / bound``. Negative integers wrap to two's complement in uint32, so the
masked modular sum of all clients is, read as int32, the exact sum of their integers as long as
it stays within int32 (`check_capacity`). A value outside the bound is never clamped: encoding
raises `OutOfRange`, naming how many values and by how much.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

CHUNK = 1 << 22  # values per vectorized step: bounds the float64 temporaries to 32 MiB


class OutOfRange(ValueError):
    """An update value exceeds the agreed quantization bound."""

    def __init__(self, count: int, max_abs: float, bound: float) -> None:
        super().__init__(f"{count} update value(s) exceed the secure-aggregation range +-{bound:g} "
                         f"(largest |value| {max_abs:g}); they were not clipped: raise "
                         "secagg.range, or leave it 0 to measure the range each round")
        self.count, self.max_abs, self.bound = count, max_abs, bound


class CapacityExceeded(ValueError):
    """The weighted sum could wrap around the 32-bit field."""


def measured_bound(max_abs: float) -> float:
    """A coarse bound (the next power of two) for a measured largest |value|."""
    if not math.isfinite(max_abs):
        raise ValueError(f"cannot bound a non-finite update value ({max_abs})")
    return 2.0 ** math.ceil(math.log2(max(max_abs, 2.0 ** -40)))


class Quantizer:
    """Fixed-point encoding shared by every client of a round."""

    def __init__(self, bound: float, bits: int) -> None:
        if not bound > 0 or not math.isfinite(bound):
            raise ValueError(f"quantization bound must be positive and finite, got {bound}")
        self.bound, self.bits = float(bound), int(bits)
        self.scale = 2.0 ** (bits - 1) / self.bound

    def check_range(self, arrays: Iterable[np.ndarray]) -> None:
        """Raise `OutOfRange` if any |value| exceeds the bound (or is NaN/Inf)."""
        count, max_abs = 0, 0.0
        for values in arrays:
            if values.size == 0:
                continue
            largest = float(np.max(np.abs(values)))
            if not largest <= self.bound:  # also catches NaN
                count += int(np.count_nonzero(~(np.abs(values) <= self.bound)))
            max_abs = largest if math.isnan(largest) else max(max_abs, largest)
        if count:
            raise OutOfRange(count, max_abs, self.bound)

    def encode(self, arrays: Sequence[np.ndarray], weight: int, out: np.ndarray,
               rng: np.random.Generator) -> None:
        """Write the integers of ``weight * values`` of `arrays`, one after the other, into
        `out` (uint32, as long as all of them together)."""
        self.check_range(arrays)
        factor = weight * self.scale
        offset = 0
        for array in arrays:
            flat = np.asarray(array).reshape(-1)
            for start in range(0, flat.size, CHUNK):
                chunk = flat[start:start + CHUNK].astype(np.float64)
                chunk *= factor
                chunk += rng.random(chunk.size)
                np.floor(chunk, out=chunk)
                out[offset:offset + chunk.size] = chunk.astype(np.int64).astype(np.uint32)
                offset += chunk.size
        if offset != out.size:
            raise ValueError(f"encoded {offset} values into a vector of {out.size}")

    def check_capacity(self, weight_sum: int, num_clients: int) -> None:
        """Raise `CapacityExceeded` unless a sum of this weight cannot wrap around int32."""
        largest = weight_sum * 2 ** (self.bits - 1) + num_clients  # +1 per client: rounding
        if largest >= 2 ** 31:
            fits = 31 - math.ceil(math.log2(weight_sum + num_clients)) + 1
            raise CapacityExceeded(
                f"a secure sum with total weight {weight_sum} over {num_clients} clients needs "
                f"{math.log2(largest) + 1:.1f} bits but the field has 32: set secagg.bits <= "
                f"{max(fits, 2)} (or secagg.weighting = 'equal')")

    def decode(self, total: np.ndarray, weight_sum: int) -> np.ndarray:
        """The weighted mean (float32) from the unmasked modular sum of the integers."""
        return (total.view(np.int32).astype(np.float64)
                * (1.0 / (self.scale * weight_sum))).astype(np.float32)
