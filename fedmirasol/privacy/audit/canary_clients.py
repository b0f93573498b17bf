"""Client-level canaries (Andrew et al. 2024): virtual clients of the auditor whose update is
a random direction at the clip norm.

Each of m canary clients gets a direction drawn uniformly from the unit sphere of the
trainable shared parameters and a secret inclusion bit (probability 1/2). An included canary
takes part in a round with the probability a real client is drawn (sampled / population),
independently, and its update, the direction times the clip norm, joins the real clients'
clipped updates in the noised sum (`fedmirasol.privacy.server_side`); an excluded canary never
takes part. The canaries are not clients of the run: they are in no count, record or figure,
and the accountant of the real clients is unchanged (their sum's noise is the same). After
training each canary's score is the cosine between its direction and the final model's
change; excluded canaries give the null distribution.

The mechanism a canary sees is the Poisson-subsampled Gaussian with noise multiplier z
(sensitivity: its own clip norm C, noise z C on the sum), add/remove; `history` gives it for
an accountant.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fedmirasol.core.parameters import NumpyState
from fedmirasol.privacy.secure_noise import SecureNoise


@dataclass
class CanaryClients:
    included: np.ndarray  # m bits
    clip_norm: float
    seed: int = field(default_factory=lambda: secrets.randbits(63))  # the directions
    layout: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    participation: list[dict[str, Any]] = field(default_factory=list)  # per round
    noise: SecureNoise = field(default_factory=SecureNoise)

    @classmethod
    def draw(cls, count: int, clip_norm: float) -> "CanaryClients":
        """m canary clients, each included with probability 1/2 (CSPRNG)."""
        if count < 2 or clip_norm <= 0:
            raise ValueError(f"need at least 2 canaries and a clip norm > 0, got {count}, "
                             f"{clip_norm}")
        bits = np.frombuffer(secrets.token_bytes(count), dtype=np.uint8) % 2 == 1
        return cls(bits, float(clip_norm))

    @property
    def count(self) -> int:
        return len(self.included)

    def bind(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """The parameters (name -> shape, in order) the directions live in."""
        self.layout = [(name, tuple(int(s) for s in shape)) for name, shape in shapes.items()]
        if not self.layout:
            raise ValueError("client-level canaries need at least one trainable parameter")

    @property
    def dimension(self) -> int:
        return int(sum(np.prod(shape) for _, shape in self.layout))

    def direction(self, index: int) -> np.ndarray:
        """Canary `index`'s unit direction (float64, the bound layout flattened)."""
        if not self.layout:
            raise RuntimeError("bind() the parameter layout first")
        vector = np.random.default_rng([self.seed, index]).standard_normal(self.dimension)
        return vector / np.linalg.norm(vector)

    def _unflatten(self, vector: np.ndarray) -> NumpyState:
        state, offset = {}, 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            state[name] = vector[offset:offset + size].reshape(shape).astype(np.float32)
            offset += size
        return state

    def observe(self, server_round: int, global_shared: Mapping[str, np.ndarray],
                updates: Mapping[int, NumpyState]) -> None:
        """Client-level canaries are scored on the final model alone."""

    def canary_updates(self, server_round: int, sample_rate: float) -> list[NumpyState]:
        """The updates of the included canaries drawn this round (each with `sample_rate`)."""
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        drawn = np.flatnonzero(self.noise.bernoulli(self.count, sample_rate) & self.included)
        self.participation.append({"round": int(server_round), "sample-rate": float(sample_rate),
                                   "canaries": int(len(drawn))})
        return [self._unflatten(self.clip_norm * self.direction(int(i))) for i in drawn]

    def cosines(self, change: Mapping[str, np.ndarray]) -> np.ndarray:
        """cos(direction_i, `change`) of every canary (`change`: the final model less the
        initial one, over the bound layout)."""
        flat = np.concatenate([np.asarray(change[name], np.float64).ravel()
                               for name, _ in self.layout])
        norm = np.linalg.norm(flat)
        if norm == 0:
            return np.zeros(self.count)
        return np.array([float(self.direction(i) @ flat) / norm for i in range(self.count)])

    def history(self, noise_multiplier: float) -> list[tuple[float, float, int]]:
        """The canaries' mechanism: (z, rate, 1) per round, for an accountant."""
        return [(float(noise_multiplier), r["sample-rate"], 1) for r in self.participation]
