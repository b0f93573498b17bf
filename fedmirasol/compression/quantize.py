"""Stochastic uniform quantization (unbiased), codes packed `bits` to a value.

Each tensor is cut into buckets of `bucket_size` values; a bucket's values are mapped onto the
2^bits evenly spaced levels between its minimum and maximum: ``lo + q * step`` with
``step = (max - min) / (2^bits - 1)``. A value ``x`` between two levels goes to the upper one
with probability equal to its distance from the lower one in steps, so the decoded value's
expectation is ``x`` (QSGD, Alistarh et al. 2017; here with min-max buckets). The payload is
``codes`` (uint8, 8/bits codes per byte), ``lo`` and ``step`` (float32 per bucket): about
``bits + 64 / bucket_size`` bits per value instead of 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, MutableMapping

import numpy as np

from fedmirasol.compression.codec import (
    Codec, Layout, Payload, expect, expect_finite, expect_keys, size,
)

BITS = (1, 2, 4, 8)


def bucket_starts(layout: Layout, bucket_size: int) -> np.ndarray:
    """Where each bucket starts in the flat vector: buckets never cross a tensor's end."""
    starts, offset = [], 0
    for _, shape in layout:
        count = int(np.prod(shape))
        starts.extend(range(offset, offset + count, bucket_size))
        offset += count
    return np.asarray(starts, np.int64)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes below 2^bits -> bytes holding 8/bits codes each (lowest bits first)."""
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[:codes.size] = codes
    shifts = np.arange(per, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    mask = np.uint8((1 << bits) - 1)
    return ((packed[:, None] >> shifts) & mask).reshape(-1)[:count]


def packed_size(count: int, bits: int) -> int:
    return -(-count // (8 // bits))


@dataclass(frozen=True)
class Quantize(Codec):
    bits: int
    bucket_size: int
    name = "quantize"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"quantization bits must be one of {BITS}, got {self.bits}")

    @property
    def top(self) -> int:
        """The highest code."""
        return (1 << self.bits) - 1

    def encode(self, values: np.ndarray, layout: Layout, rng: np.random.Generator,
               memory: MutableMapping[str, np.ndarray]) -> Payload:
        values = np.asarray(values, np.float32)
        if values.size == 0:
            return {"codes": np.zeros(0, np.uint8), "lo": np.zeros(0, np.float32),
                    "step": np.zeros(0, np.float32)}
        starts = bucket_starts(layout, self.bucket_size)
        lo = np.minimum.reduceat(values, starts)  # float32 values: min and max are exact
        hi = np.maximum.reduceat(values, starts)
        step = ((hi.astype(np.float64) - lo) / self.top).astype(np.float32)
        # the float32 step rounded down would leave the maximum above the top level: step up
        short = lo.astype(np.float64) + self.top * step.astype(np.float64) < hi
        step[short] = np.nextafter(step[short], np.float32(np.inf))
        lengths = np.diff(np.append(starts, values.size))
        lo_each = np.repeat(lo.astype(np.float64), lengths)
        step_each = np.repeat(step.astype(np.float64), lengths)
        scaled = np.divide(values - lo_each, step_each, out=np.zeros(values.size),
                           where=step_each > 0)
        codes = np.floor(scaled + rng.random(values.size))
        np.clip(codes, 0, self.top, out=codes)
        return {"codes": pack(codes.astype(np.uint8), self.bits), "lo": lo, "step": step}

    def decode(self, payload: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
        count = size(layout)
        buckets = bucket_starts(layout, self.bucket_size)
        expect_keys(payload, ("codes", "lo", "step"))
        packed = expect(payload, "codes", np.uint8, packed_size(count, self.bits))
        lo = expect(payload, "lo", np.float32, buckets.size)
        step = expect(payload, "step", np.float32, buckets.size)
        expect_finite(lo, "lo")
        expect_finite(step, "step")
        if count == 0:
            return np.zeros(0, np.float32)
        lengths = np.diff(np.append(buckets, count))
        codes = unpack(packed, self.bits, count).astype(np.float64)
        decoded = np.repeat(lo.astype(np.float64), lengths) \
            + codes * np.repeat(step.astype(np.float64), lengths)
        out = decoded.astype(np.float32)
        expect_finite(out, "codes")
        return out

    def scaled(self, payload: Payload, layout: Layout, factor: float) -> Payload:
        return {**payload, "lo": (payload["lo"] * np.float32(factor)).astype(np.float32),
                "step": (payload["step"] * np.float32(factor)).astype(np.float32)}
