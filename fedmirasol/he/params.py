"""CKKS parameters: ring degree, coefficient-modulus primes, encoding scale, and what follows
from them (values a ciphertext, capacity, error bound, security level), checked by SEAL.

Precision: SEAL's fresh-encryption noise has coefficients of magnitude at most 21 (its
centered binomial sampler; the clipped normal one stops at 19.2) and encoding rounds each
coefficient by at most 1/2, so a decrypted value of a fresh ciphertext is within
N x 21.5 / scale of what was encrypted, and a sum of K ciphertexts within K times that
(floating-point error of the FFTs, relative 1e-15 of the values, is far below).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from fedmirasol.config.he import HEConfig
from fedmirasol.errors import ConfigError

try:
    import tenseal.sealapi as seal
except ImportError as missing:  # pragma: no cover - the extra is part of the test install
    raise ImportError("homomorphic encryption needs TenSEAL: pip install 'fedmirasol[he]'"
                      ) from missing

NOISE_MAX = 21.0  # SEAL's largest fresh-noise coefficient (centered binomial, sigma 3.2)
_LEVELS = ((256, seal.SEC_LEVEL_TYPE.TC256), (192, seal.SEC_LEVEL_TYPE.TC192),
           (128, seal.SEC_LEVEL_TYPE.TC128))


@dataclass(frozen=True)
class CkksParameters:
    """CKKS parameters: ring degree N, coefficient-modulus prime sizes, encoding scale."""

    poly_modulus_degree: int = 8192
    coeff_bits: tuple[int, ...] = (60,)
    scale_bits: int = 40

    @classmethod
    def from_config(cls, he: HEConfig) -> "CkksParameters":
        return cls(he.poly_modulus_degree, he.prime_bits(), he.scale_bits)

    @property
    def values_per_ciphertext(self) -> int:
        """N: N/2 complex slots, each holding two real values."""
        return self.poly_modulus_degree

    @property
    def scale(self) -> float:
        return 2.0 ** self.scale_bits

    @property
    def data_bits(self) -> int:
        """Bits of the modulus fresh ciphertexts live under (the last of several primes is
        SEAL's special prime, used only for key switching)."""
        bits = self.coeff_bits
        return bits[0] if len(bits) == 1 else sum(bits[:-1])

    @property
    def capacity(self) -> float:
        """The largest magnitude a value of a sum may reach (a factor 8 below wrapping around:
        2 for the sign, 2 for a complex slot's modulus, 2 for the encoding's coefficients)."""
        return 2.0 ** (self.data_bits - self.scale_bits - 3)

    @property
    def noise_bound(self) -> float:
        """The largest error of one value of one fresh ciphertext, decrypted."""
        return self.poly_modulus_degree * (NOISE_MAX + 0.5) / self.scale

    def security_level(self) -> int:
        """The classical security level (HomomorphicEncryption.org standard, as SEAL checks
        it) these parameters meet: 256, 192 or 128."""
        total = sum(self.coeff_bits)
        for level, kind in _LEVELS:
            if total <= seal.CoeffModulus.MaxBitCount(self.poly_modulus_degree, kind):
                return level
        raise ConfigError(f"CKKS parameters N = {self.poly_modulus_degree} with "
                          f"{total} bits of coefficient modulus (he.coeff-bits) are below "
                          "128-bit security; use fewer or smaller primes or a larger N")

    def context(self) -> Any:
        """SEAL's context for these parameters (one per process)."""
        return _seal_context(self)

    def metadata(self) -> dict[str, str]:
        return {"poly-modulus-degree": str(self.poly_modulus_degree),
                "coeff-bits": ",".join(map(str, self.coeff_bits)),
                "scale-bits": str(self.scale_bits)}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "CkksParameters":
        return cls(int(meta["poly-modulus-degree"]),
                   tuple(int(b) for b in meta["coeff-bits"].split(",")), int(meta["scale-bits"]))

    def describe(self) -> str:
        return (f"N = {self.poly_modulus_degree}, primes {list(self.coeff_bits)} bits, scale "
                f"2^{self.scale_bits}, {self.security_level()}-bit security")


@functools.lru_cache(maxsize=4)
def _seal_context(params: CkksParameters) -> Any:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree,
                                                     list(params.coeff_bits)))
    params.security_level()  # raises, naming the keys, below 128 bits
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ConfigError(f"CKKS parameters rejected by SEAL ({params.describe()}): "
                          f"{context.parameters_error_message()}")
    return context
