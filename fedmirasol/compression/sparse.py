"""Sparsification: send k = ceil(fraction x size) values of the update and where they sit.

- top-k: the k values of largest magnitude. Their positions travel as a bitmap (one bit per
  value) or as indices (uint16 below 65,536 values, else uint32), whichever is smaller (both
  ends compute which). Biased on its own; with error feedback what is left out is sent later
  (Stich et al. 2018; Karimireddy et al. 2019).
- random-k: k positions drawn from a 64-bit seed (Philox's raw stream, which numpy keeps the
  same across versions), so only the seed and the values travel. Without error feedback the
  values are scaled by size/k, which makes the decoded update unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, MutableMapping

import numpy as np

from fedmirasol.compression.codec import (
    Codec, Layout, MalformedPayload, Payload, expect, expect_finite, expect_keys, size,
)


def kept(count: int, fraction: float) -> int:
    """How many values a sparse codec sends of `count`."""
    return min(count, max(1, math.ceil(fraction * count))) if count else 0


def index_dtype(count: int) -> np.dtype:
    return np.dtype(np.uint16 if count <= 1 << 16 else np.uint32)


def uses_bitmap(count: int, k: int) -> bool:
    """Positions as a bitmap when that is smaller than k indices."""
    return -(-count // 8) < k * index_dtype(count).itemsize


def random_positions(seed: int, count: int, k: int) -> np.ndarray:
    """k distinct sorted positions below `count`, from `seed`: the k smallest of `count`
    64-bit draws of Philox(seed)."""
    draws = np.random.Philox(int(seed)).random_raw(count)
    return np.sort(np.argpartition(draws, k - 1)[:k]) if k < count else np.arange(count)


class Sparse(Codec):
    """What top-k and random-k share: their values scale linearly."""

    def scaled(self, payload: Payload, layout: Layout, factor: float) -> Payload:
        return {**payload, "values": (payload["values"] * np.float32(factor)).astype(np.float32)}


@dataclass(frozen=True)
class TopK(Sparse):
    fraction: float
    name = "top-k"

    def encode(self, values: np.ndarray, layout: Layout, rng: np.random.Generator,
               memory: MutableMapping[str, np.ndarray]) -> Payload:
        values = np.asarray(values, np.float32)
        count = values.size
        k = kept(count, self.fraction)
        positions = np.sort(np.argpartition(np.abs(values), count - k)[count - k:]) \
            if k < count else np.arange(count)
        payload = {"values": values[positions].astype(np.float32)}
        if uses_bitmap(count, k):
            bitmap = np.zeros(count, bool)
            bitmap[positions] = True
            payload["bitmap"] = np.packbits(bitmap)
        else:
            payload["positions"] = positions.astype(index_dtype(count))
        return payload

    def decode(self, payload: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
        count = size(layout)
        k = kept(count, self.fraction)
        if uses_bitmap(count, k):
            expect_keys(payload, ("values", "bitmap"))
            bits = np.unpackbits(expect(payload, "bitmap", np.uint8, -(-count // 8)))
            if bits[count:].any():
                raise MalformedPayload("the payload's bitmap marks positions past the update")
            positions = np.flatnonzero(bits[:count])
            if positions.size != k:
                raise MalformedPayload(f"the payload's bitmap marks {positions.size} positions, "
                                       f"the run's codec sends {k}")
        else:
            expect_keys(payload, ("values", "positions"))
            positions = expect(payload, "positions", index_dtype(count), k).astype(np.int64)
            if k and (positions[-1] >= count or (np.diff(positions) <= 0).any()):
                raise MalformedPayload("the payload's positions are not increasing positions "
                                       f"below {count}")
        return scatter(payload, positions, count, k)

@dataclass(frozen=True)
class RandomK(Sparse):
    fraction: float
    unbiased: bool  # values scaled by size / k (without error feedback)
    name = "random-k"

    def encode(self, values: np.ndarray, layout: Layout, rng: np.random.Generator,
               memory: MutableMapping[str, np.ndarray]) -> Payload:
        values = np.asarray(values, np.float32)
        k = kept(values.size, self.fraction)
        seed = np.uint64(rng.integers(0, 2 ** 63))
        chosen = values[random_positions(int(seed), values.size, k)]
        if self.unbiased and k:
            chosen = chosen * np.float32(values.size / k)
        return {"seed": np.array([seed], np.uint64), "values": chosen.astype(np.float32)}

    def decode(self, payload: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
        count = size(layout)
        k = kept(count, self.fraction)
        expect_keys(payload, ("seed", "values"))
        seed = int(expect(payload, "seed", np.uint64, 1)[0])
        return scatter(payload, random_positions(seed, count, k) if k else
                       np.zeros(0, np.int64), count, k)


def scatter(payload: Mapping[str, np.ndarray], positions: np.ndarray, count: int,
            k: int) -> np.ndarray:
    """The dense vector with the payload's `values` at `positions`."""
    values = expect(payload, "values", np.float32, k)
    expect_finite(values, "values")
    out = np.zeros(count, np.float32)
    out[positions] = values
    return out
