"""The figures a masked reply carries besides the update, each summed securely.

Under secure aggregation nothing per client leaves in the clear, so a client's weight, a count
of 1 (it contributed) and its metrics (train loss; at evaluation its example count, losses and
accuracies) travel as entries of one masked uint64 vector, and the server learns only their
sums. Each metric m (clipped to [0, cap]; a missing or non-finite one is not reported) yields
four sums: of m, of weight x m, of the clients that reported it and of their weights, so the
server can form both the mean over clients and the weighted mean. Values are fixed point
(`FIXED_POINT` units per 1.0) with stochastic rounding; counts and weights are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

FIXED_POINT = 2.0 ** 16
WEIGHT, CONTRIBUTORS = "weight", "contributors"
FIELD = np.dtype(np.uint64)


class Inconsistent(ValueError):
    """The unmasked sums are outside what honest clients can produce."""


@dataclass(frozen=True)
class SumSpec:
    """What every client of a round sums: its weight (clipped to `max_weight`), 1, and the
    `metrics` ((name, cap) pairs)."""

    max_weight: int
    metrics: tuple[tuple[str, float], ...] = ()

    def entries(self) -> list[tuple[str, float, float]]:
        """(key, cap, scale) of every entry, in vector order."""
        entries = [(WEIGHT, float(self.max_weight), 1.0), (CONTRIBUTORS, 1.0, 1.0)]
        for name, cap in self.metrics:
            entries += [(name, cap, FIXED_POINT), (f"{name}|weighted", cap * self.max_weight,
                                                   FIXED_POINT),
                        (f"{name}|count", 1.0, 1.0), (f"{name}|weight", float(self.max_weight),
                                                      1.0)]
        return entries

    @property
    def size(self) -> int:
        return 2 + 4 * len(self.metrics)

    def check_capacity(self, clients: int) -> None:
        """Raise `Inconsistent` if `clients` honest entries could wrap the signed 64-bit sum."""
        largest = max(cap * scale + 1 for _, cap, scale in self.entries()) * clients
        if largest >= 2 ** 63:
            raise Inconsistent(f"the secure sums of {clients} clients could exceed 64 bits "
                               "(lower strategy.max-num-examples)")

    def encode(self, weight: int, metrics: Mapping[str, object],
               rng: np.random.Generator) -> np.ndarray:
        """One client's entries (`weight` already within [1, max_weight])."""
        if not 1 <= weight <= self.max_weight:
            raise ValueError(f"weight {weight} is outside [1, {self.max_weight}]")
        values = [float(weight), 1.0]
        for name, cap in self.metrics:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                clipped = min(max(float(value), 0.0), cap)
                values += [clipped, clipped * weight, 1.0, float(weight)]
            else:
                values += [0.0, 0.0, 0.0, 0.0]
        scales = np.array([scale for _, _, scale in self.entries()])
        fixed = np.floor(np.array(values) * scales + rng.random(len(values)) * (scales > 1))
        return fixed.astype(np.int64).astype(FIELD)

    def decode(self, total: np.ndarray, survivors: int) -> "Sums":
        """The sums from the unmasked total of `survivors` clients' entries; `Inconsistent`
        (naming the entry) when one lies outside what that many honest clients can sum."""
        if total.dtype != FIELD or total.size != self.size:
            raise ValueError(f"expected {self.size} uint64 sums, got {total.size} "
                             f"{total.dtype}")
        signed = total.view(np.int64)
        values: dict[str, float] = {}
        for (key, cap, scale), value in zip(self.entries(), signed.tolist()):
            if not 0 <= value <= survivors * (cap * scale + 1):
                raise Inconsistent(f"the secure sum of {key!r} is {value / scale:g}, outside "
                                   f"[0, {survivors} x {cap:g}] for {survivors} clients: a "
                                   "client masked a figure beyond the protocol's bounds")
            values[key] = value / scale
        sums = Sums(values)
        if sums.contributors > survivors:
            raise Inconsistent(f"the secure sums count {sums.contributors} contributors among "
                               f"{survivors} survivors: a client masked a count other than 1")
        if sums.weight > sums.contributors * self.max_weight:
            raise Inconsistent(f"the secure sum of the weights, {sums.weight}, exceeds "
                               f"{sums.contributors} contributors x strategy.max-num-examples "
                               f"= {self.max_weight}: a client masked a weight over the bound")
        return sums

    def to_record(self) -> dict[str, object]:
        """The spec as stage-record fields (the server sends it; every client uses it)."""
        return {"max-weight": self.max_weight, "metrics": [n for n, _ in self.metrics],
                "metric-caps": [float(c) for _, c in self.metrics]}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> "SumSpec":
        names, caps = list(record["metrics"]), list(record["metric-caps"])
        if len(names) != len(caps) or int(record["max-weight"]) < 1:
            raise ValueError("malformed secure-sum spec (metric names and caps differ in "
                             "length, or max-weight < 1)")
        return cls(int(record["max-weight"]), tuple(zip(map(str, names), map(float, caps))))


@dataclass(frozen=True)
class Sums:
    """The unmasked sums of a round."""

    values: Mapping[str, float]

    @property
    def weight(self) -> int:
        return int(self.values[WEIGHT])

    @property
    def contributors(self) -> int:
        return int(self.values[CONTRIBUTORS])

    def mean(self, name: str) -> float | None:
        """The mean of `name` over the clients that reported it."""
        count = self.values.get(f"{name}|count", 0)
        return self.values[name] / count if count else None

    def weighted_mean(self, name: str) -> float | None:
        """The weight-weighted mean of `name` over the clients that reported it."""
        weight = self.values.get(f"{name}|weight", 0)
        return self.values[f"{name}|weighted"] / weight if weight else None
