"""The run config's ``[he]`` section: homomorphic encryption of the updates (CKKS)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

MAX_PRIME_BITS = 60  # SEAL's largest coefficient-modulus prime


class HEConfig(Section):
    """The server sums CKKS ciphertexts it cannot read; the sites, which share one secret key,
    decrypt the sum (fedmirasol.he). The CKKS parameters are those of the keys a simulation
    makes; a deployment's key files carry their own (`fedmirasol he-keys` takes the same
    values as flags)."""

    enabled: bool = False
    # the server's context file (`fedmirasol he-keys`: parameters and key id, no key); empty in
    # a simulation, which makes a key pair in its run directory
    public_context: str = ""
    poly_modulus_degree: int = 8192  # N: a ciphertext packs N values (N/2 complex slots)
    coeff_bits: str = "60"  # the coefficient modulus' prime sizes, comma-separated
    scale_bits: int = 40  # the encoding scale 2^scale-bits (precision ~ N * 21.5 / scale)
    batch_ciphertexts: int = Field(32, ge=1)  # ciphertexts per array: the streaming unit
    # the fewest updates in a sum a site decrypts; under client-level DP each client's share
    # of the noise is calibrated to it
    min_contributors: int = 2

    @model_validator(mode="after")
    def _check(self) -> "HEConfig":
        n = self.poly_modulus_degree
        if n < 1024 or n > 32768 or n & (n - 1):
            raise ConfigError(f"config key 'he.poly-modulus-degree' must be a power of two in "
                              f"[1024, 32768], got {n!r}")
        bits = self.prime_bits()
        if not 0 < self.scale_bits <= bits[0] - 10:
            raise ConfigError(f"config key 'he.scale-bits' must be in [1, {bits[0] - 10}] (the "
                              f"first prime of he.coeff-bits has {bits[0]} bits and the sums "
                              f"need room above the scale), got {self.scale_bits!r}")
        if self.min_contributors < 2:
            raise ConfigError("config key 'he.min-contributors' must be >= 2 (a sum over one "
                              f"client is that client's update), got {self.min_contributors!r}")
        return self

    def prime_bits(self) -> tuple[int, ...]:
        """`coeff-bits` as integers, each a valid prime size."""
        try:
            bits = tuple(int(part) for part in self.coeff_bits.split(","))
        except ValueError:
            bits = ()
        if not bits or any(not 20 <= b <= MAX_PRIME_BITS for b in bits):
            raise ConfigError(f"config key 'he.coeff-bits' must be comma-separated prime sizes "
                              f"in [20, {MAX_PRIME_BITS}] bits (e.g. \"60\" or \"60,40,40\"), got "
                              f"{self.coeff_bits!r}")
        return bits
