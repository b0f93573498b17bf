"""DP randomness from a cryptographically secure generator: Gaussian noise and Poisson draws.

Noise from a seeded Mersenne Twister (torch's generator) or numpy's legacy global generator
can be predicted by whoever learns a few outputs or the seed, and low-precision noise leaves
patterns in its low bits (the floating-point attacks of Mironov 2012 and Jin et al. 2021).
`SecureNoise` draws its bits from AES in counter mode (randomgen's `AESCounter`, AES-NI) under
a fresh 128-bit key from the operating system's CSPRNG (`os.urandom`), and turns them into
float64 uniforms and Gaussians (numpy's ziggurat). Like Opacus' ``secure_mode``, each released
Gaussian is the sum of four independent draws divided by two (Holohan et al., section 5.1 of
arXiv:2107.10138), which defeats the attacks on one draw. Opacus' own ``secure_mode`` needs
torchcsprng, which has no build for the torch this project pins.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from randomgen import AESCounter


class SecureNoise:
    """A CSPRNG stream of uniforms, Bernoulli draws and Gaussians. Nothing about it can be
    seeded: a test that needs repeatable draws passes its own torch generator to the sampler
    and optimizer instead."""

    def __init__(self) -> None:
        self._generator = np.random.Generator(
            AESCounter(key=int.from_bytes(os.urandom(16), "little")))

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in [0, 1), each with 53 random bits."""
        return self._generator.random(count)

    def bernoulli(self, count: int, probability: float) -> np.ndarray:
        """`count` independent draws, each True with `probability` (Poisson sampling)."""
        return self.uniform(count) < probability

    def normal_array(self, shape: tuple[int, ...] | int, std: float) -> np.ndarray:
        """float64 N(0, std^2) of `shape`: (four draws summed) / 2."""
        draws = self._generator.standard_normal((4, int(np.prod(shape))))
        return (std * (draws.sum(axis=0) / 2.0)).reshape(shape)

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """The same as a float64 torch tensor on `device`."""
        shape = tuple(shape)
        if std == 0:
            return torch.zeros(shape, dtype=torch.float64, device=device)
        return torch.from_numpy(self.normal_array(shape, std)).to(device)
