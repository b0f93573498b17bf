"""Pseudo-random masks in Z_(2^32), expanded from a secret seed with AES-256-CTR.

The keystream of AES-CTR (the `cryptography` package) under a 32-byte seed is read as uint32
values and added to (or subtracted from) a vector in place, a few MiB at a time, so a mask of
any length costs one pass and no full-size temporary.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CHUNK_BYTES = 1 << 22
_ZEROS = bytes(CHUNK_BYTES)


def _key(seed: bytes) -> bytes:
    """A 32-byte AES key from a seed of any length (seeds are already uniform secrets)."""
    return seed if len(seed) == 32 else hashlib.sha256(seed).digest()


def apply_mask(vector: np.ndarray, seed: bytes, sign: int = 1) -> None:
    """``vector += sign * PRG(seed)`` modulo 2^32, in place (`vector`: contiguous uint32)."""
    if vector.dtype != np.uint32 or not vector.flags.c_contiguous:
        raise TypeError("masks apply to a contiguous uint32 vector")
    if sign not in (1, -1):
        raise ValueError("sign must be +1 or -1")
    encryptor = Cipher(algorithms.AES(_key(seed)), modes.CTR(bytes(16))).encryptor()
    buffer = bytearray(CHUNK_BYTES + 16)
    stream = np.frombuffer(buffer, np.uint32, count=CHUNK_BYTES // 4)
    step = CHUNK_BYTES // 4
    for start in range(0, vector.size, step):
        part = vector[start:start + step]
        encryptor.update_into(_ZEROS[:part.size * 4], buffer)
        if sign > 0:
            part += stream[:part.size]
        else:
            part -= stream[:part.size]
