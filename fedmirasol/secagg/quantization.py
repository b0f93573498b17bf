"""Float updates <-> integers in Z_(2^32) or Z_(2^64), without silent clipping.

A client maps each value x (|x| <= bound) of its update, times its integer weight w, to the
integer ``floor(w * x * scale + u)``, u ~ U[0, 1) (stochastic rounding: unbiased), with
``scale = 2^(bits-1) / bound``. Negative integers wrap to two's complement in the field, so the
masked modular sum of all clients is, read as signed, the exact sum of their integers as long
as the field is wide enough (`SecAggConfig.field_bits` picks it; `check_capacity` checks a
sum). A value outside the bound is never clamped: encoding raises `OutOfRange`, naming how many
values and by how much.

Under client-level DP the quantized update must keep the L2 norm the accountant assumes
(`max_norm`): rounding can add up to sqrt(d) steps to it, so after rounding the encoder moves
values that rounded away from zero back to their truncation (the ones closest to it first)
until the integer vector's norm is within the bound. The truncated vector is never longer
than the clipped update, so this always succeeds; the guarantee holds for every draw.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import numpy as np

CHUNK = 1 << 22  # values per vectorized step: bounds the float64 temporaries to 32 MiB
NORM_SLACK = 1e-9  # relative margin for float64 sums of squares near the norm bound
SIGNED = {np.dtype(np.uint32): np.int32, np.dtype(np.uint64): np.int64}


class OutOfRange(ValueError):
    """An update value exceeds the agreed quantization bound."""

    def __init__(self, count: int, max_abs: float, bound: float) -> None:
        super().__init__(f"{count} update value(s) exceed the secure-aggregation range +-{bound:g} "
                         f"(largest |value| {max_abs:g}); they were not clipped: raise "
                         "secagg.range (the declared bound every client quantizes to)")
        self.count, self.max_abs, self.bound = count, max_abs, bound


class CapacityExceeded(ValueError):
    """The weighted sum could wrap around the sum field."""


class Quantizer:
    """Fixed-point encoding shared by every client of a round, into a `field_bits` field."""

    def __init__(self, bound: float, bits: int, field_bits: int = 32) -> None:
        if not bound > 0 or not math.isfinite(bound):
            raise ValueError(f"quantization bound must be positive and finite, got {bound}")
        if field_bits not in (32, 64):
            raise ValueError(f"the sum field has 32 or 64 bits, got {field_bits}")
        self.bound, self.bits, self.field_bits = float(bound), int(bits), int(field_bits)
        self.scale = 2.0 ** (bits - 1) / self.bound
        self.dtype = np.dtype(np.uint32 if field_bits == 32 else np.uint64)

    def check_range(self, arrays: Iterable[np.ndarray]) -> None:
        """Raise `OutOfRange` if any |value| exceeds the bound (or is NaN/Inf)."""
        count, max_abs = 0, 0.0
        for values in arrays:
            if values.size == 0:
                continue
            largest = max(float(np.max(values)), -float(np.min(values)))  # NaN propagates
            if not largest <= self.bound:  # also catches NaN
                count += int(np.count_nonzero(~(np.abs(values) <= self.bound)))
            max_abs = largest if math.isnan(largest) else max(max_abs, largest)
        if count:
            raise OutOfRange(count, max_abs, self.bound)

    @staticmethod
    def _chunks(arrays: Sequence[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, float64 copy) of every chunk of the arrays, one after the other (the copy
        lives in one buffer: valid until the next chunk)."""
        buffer = np.empty(CHUNK, np.float64)
        offset = 0
        for array in arrays:
            flat = np.asarray(array).reshape(-1)
            for start in range(0, flat.size, CHUNK):
                chunk = buffer[:min(CHUNK, flat.size - start)]
                chunk[...] = flat[start:start + chunk.size]
                yield offset, chunk
                offset += chunk.size

    def encode(self, arrays: Sequence[np.ndarray], weight: int, out: np.ndarray,
               rng: np.random.Generator, max_norm: float | None = None) -> None:
        """Write the integers of ``weight * values`` of `arrays`, one after the other, into
        `out` (of this field's dtype, as long as all of them together). With `max_norm`, the
        integers' L2 norm is at most ``weight * max_norm * scale`` (see the module)."""
        self.check_range(arrays)
        if out.dtype != self.dtype:
            raise TypeError(f"out has dtype {out.dtype}, the field {self.dtype}")
        factor = weight * self.scale
        if max_norm is not None:  # a float-rounding excess over the clip is scaled away
            norm = math.sqrt(sum(float(np.dot(c, c)) for _, c in self._chunks(arrays)))
            if norm > max_norm * (1 - 2 * NORM_SLACK):
                factor *= max_norm * (1 - 2 * NORM_SLACK) / norm
        signed = out.view(SIGNED[out.dtype])
        noise = np.empty(CHUNK, np.float64)
        squares, end = 0.0, 0
        for offset, chunk in self._chunks(arrays):
            chunk *= factor
            draws = noise[:chunk.size]
            rng.random(out=draws)
            chunk += draws
            np.floor(chunk, out=chunk)
            if max_norm is not None:
                squares += float(np.dot(chunk, chunk))
            signed[offset:offset + chunk.size] = chunk  # integral: the cast is exact
            end = offset + chunk.size
        if end != out.size:
            raise ValueError(f"encoded {end} values into a vector of {out.size}")
        if max_norm is not None:
            limit = (weight * max_norm * self.scale) ** 2 * (1 - NORM_SLACK)
            if squares > limit:
                self._pull_in(arrays, factor, out, squares - limit)

    def _pull_in(self, arrays: Sequence[np.ndarray], factor: float, out: np.ndarray,
                 excess: float) -> None:
        """Move integers that rounded away from zero back to their truncation, those whose
        value lay closest to it first, until the sum of squares fell by `excess`."""
        signed = out.view(SIGNED[out.dtype])
        where, distance, saving, truncated = [], [], [], []
        for offset, chunk in self._chunks(arrays):
            chunk *= factor
            toward = np.trunc(chunk)
            got = signed[offset:offset + chunk.size].astype(np.float64)
            away = np.flatnonzero(got != toward)
            where.append(away + offset)
            distance.append(np.abs(chunk[away] - toward[away]))
            saving.append(got[away] ** 2 - toward[away] ** 2)
            truncated.append(toward[away])
        order = np.argsort(np.concatenate(distance), kind="stable")
        savings = np.cumsum(np.concatenate(saving)[order])
        count = int(np.searchsorted(savings, excess)) + 1
        if count > order.size:  # cannot happen: the truncation is within the clip
            raise ValueError("the update's norm exceeds the bound even truncated")
        chosen = order[:count]
        signed[np.concatenate(where)[chosen]] = np.concatenate(truncated)[chosen].astype(
            signed.dtype)

    def check_capacity(self, weight_sum: int, num_clients: int) -> None:
        """Raise `CapacityExceeded`, naming the cause, unless a sum of this total weight
        cannot wrap around the field."""
        largest = weight_sum * 2 ** (self.bits - 1) + num_clients  # +1 per client: rounding
        if largest >= 2 ** (self.field_bits - 1):
            raise CapacityExceeded(
                f"a secure sum with total weight {weight_sum} over {num_clients} clients needs "
                f"{math.log2(largest) + 1:.1f} bits but the field has {self.field_bits}: the "
                "weights exceed what the field was sized for (strategy.max-num-examples x "
                "clients)")

    def decode(self, total: np.ndarray, weight_sum: int) -> np.ndarray:
        """The weighted mean (float32) from the unmasked modular sum of the integers."""
        return (total.view(SIGNED[total.dtype]).astype(np.float64)
                * (1.0 / (self.scale * weight_sum))).astype(np.float32)
