"""The CKKS contexts, through Microsoft SEAL (TenSEAL's `sealapi` binding): the sites' (with
the federation's secret key: encrypt, decrypt) and the server's (parameters and key id only:
load, add, save ciphertexts).

Choices (measured in benchmarks/README.md, "Homomorphic encryption"):

- Symmetric (secret-key) encryption: every site holds the secret key anyway, and SEAL then
  serializes a fresh ciphertext with its random half replaced by a seed, halving the upload.
  The server gets no public key, so it cannot encrypt values of its own either.
- Two values per slot (real and imaginary part): a ciphertext of degree N carries N values.
- One coefficient-modulus prime by default: the server only adds, so no rescaling levels are
  needed; a ciphertext is then 2 x N x 8 bytes (8 bytes a value uploaded, 16 the sum).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from fedmirasol.he import seal_io
from fedmirasol.he.errors import DecryptionFailed, WrongContext
from fedmirasol.he.params import CkksParameters, seal


class ServerContext:
    """What the server holds: the parameters and the federation's key id, no key. It loads,
    adds and saves ciphertexts; it can neither encrypt nor decrypt."""

    def __init__(self, params: CkksParameters, key_id: str) -> None:
        self.params, self.key_id = params, key_id
        self._context = params.context()
        self._evaluator = seal.Evaluator(self._context)

    def load(self, data: bytes | memoryview) -> list[Any]:
        """The ciphertexts of a batch (ValueError: not valid ciphertexts of these
        parameters)."""
        ciphertexts = []
        for part in seal_io.split(data):
            try:
                ciphertexts.append(seal_io.load(seal.Ciphertext(), self._context, part))
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"not a ciphertext of these CKKS parameters ({error})") from None
        return ciphertexts

    def add(self, total: list[Any], ciphertexts: list[Any]) -> None:
        """`total[i] += ciphertexts[i]` (ValueError when the batches differ in size, scale or
        level)."""
        if len(total) != len(ciphertexts):
            raise ValueError(f"{len(ciphertexts)} ciphertexts where {len(total)} were expected")
        for into, other in zip(total, ciphertexts):
            if other.scale != into.scale or other.parms_id() != into.parms_id():
                raise ValueError("a ciphertext at another scale or level than the others")
            try:
                self._evaluator.add_inplace(into, other)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"ciphertexts cannot be added ({error})") from None

    @staticmethod
    def save(ciphertexts: list[Any]) -> bytes:
        return b"".join(seal_io.save(ciphertext) for ciphertext in ciphertexts)


class SiteContext(ServerContext):
    """A site's context: the server's plus the federation's secret key (encrypt, decrypt)."""

    def __init__(self, params: CkksParameters, key_id: str, secret_key: Any) -> None:
        super().__init__(params, key_id)
        self._secret = secret_key
        self._encoder = seal.CKKSEncoder(self._context)
        self._encryptor = seal.Encryptor(self._context, secret_key)
        self._decryptor = seal.Decryptor(self._context, secret_key)

    def public(self) -> ServerContext:
        """The server's context of this federation (no key)."""
        return ServerContext(self.params, self.key_id)

    def encrypt(self, values: np.ndarray) -> bytes:
        """`values` (float64, any length; zero-padded to whole ciphertexts), each ciphertext
        serialized seeded, concatenated."""
        n = self.params.values_per_ciphertext
        out = []
        for start in range(0, len(values), n):
            chunk = np.zeros(n)
            part = values[start:start + n]
            chunk[:len(part)] = part
            plain = seal.Plaintext()
            self._encoder.encode((chunk[0::2] + 1j * chunk[1::2]).tolist(), self.params.scale,
                                 plain)
            out.append(seal_io.save(self._encryptor.encrypt_symmetric(plain)))
        return b"".join(out)

    def decrypt(self, data: bytes | memoryview) -> np.ndarray:
        """The values of a batch of ciphertexts (float64, whole ciphertexts)."""
        try:
            ciphertexts = self.load(data)
        except ValueError as error:
            raise WrongContext(f"the ciphertexts do not load under this site's CKKS "
                               f"parameters ({self.params.describe()}): {error}") from None
        out = np.empty(len(ciphertexts) * self.params.values_per_ciphertext)
        for i, ciphertext in enumerate(ciphertexts):
            plain = seal.Plaintext()
            try:
                self._decryptor.decrypt(ciphertext, plain)
            except (RuntimeError, ValueError) as error:
                raise DecryptionFailed(f"a ciphertext does not decrypt ({error})") from None
            slots = self._encoder.decode_complex(plain)
            slots = np.fromiter(slots, np.complex128, count=len(slots))
            n = self.params.values_per_ciphertext
            out[i * n:(i + 1) * n:2], out[i * n + 1:(i + 1) * n:2] = slots.real, slots.imag
        return out


def new_site_context(params: CkksParameters) -> SiteContext:
    """A fresh secret key and key id."""
    key = seal.KeyGenerator(params.context()).secret_key()
    return SiteContext(params, secrets.token_hex(16), key)


def check_key(context: ServerContext, key_id: str, what: str) -> None:
    """WrongContext unless `what` was encrypted under `context`'s key."""
    if key_id != context.key_id:
        raise WrongContext(f"{what} is encrypted under key id {key_id}, but this context's key "
                           f"id is {context.key_id}: the site and the server must use the "
                           "two files one `fedmirasol he-keys` call wrote")
