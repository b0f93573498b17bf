"""Pseudo-random masks in Z_(2^32) or Z_(2^64), expanded from a secret seed with AES-256-CTR.

The keystream of AES-CTR (the `cryptography` package) under a 32-byte seed is read as unsigned
integers of the vector's width and added to (or subtracted from) it in place, a few MiB at a
time, so a mask of any length costs one pass and no full-size temporary. One seed masks
several vectors of a message through separate `stream`s (the stream number is the high half of
the initial counter block), so no two vectors ever share keystream.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CHUNK_BYTES = 1 << 22
_ZEROS = bytes(CHUNK_BYTES)
FIELDS = (np.dtype(np.uint32), np.dtype(np.uint64))  # the widths a masked vector may have


def _key(seed: bytes) -> bytes:
    """A 32-byte AES key from a seed of any length (seeds are already uniform secrets)."""
    return seed if len(seed) == 32 else hashlib.sha256(seed).digest()


def apply_mask(vector: np.ndarray, seed: bytes, sign: int = 1, stream: int = 0) -> None:
    """``vector += sign * PRG(seed, stream)`` modulo 2^width, in place (`vector`: contiguous
    uint32 or uint64)."""
    if vector.dtype not in FIELDS or not vector.flags.c_contiguous:
        raise TypeError("masks apply to a contiguous uint32 or uint64 vector")
    if sign not in (1, -1):
        raise ValueError("sign must be +1 or -1")
    if not 0 <= stream < 2 ** 64:
        raise ValueError(f"mask stream must be within [0, 2^64), got {stream}")
    nonce = stream.to_bytes(8, "big") + bytes(8)
    encryptor = Cipher(algorithms.AES(_key(seed)), modes.CTR(nonce)).encryptor()
    buffer = bytearray(CHUNK_BYTES + 16)
    width = vector.dtype.itemsize
    step = CHUNK_BYTES // width
    keystream = np.frombuffer(buffer, vector.dtype, count=step)
    for start in range(0, vector.size, step):
        part = vector[start:start + step]
        encryptor.update_into(_ZEROS[:part.size * width], buffer)
        if sign > 0:
            part += keystream[:part.size]
        else:
            part -= keystream[:part.size]
