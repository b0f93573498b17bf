"""Long-term node identities: what lets an honest client tell a real peer from the server.

Every participant signs its round keys with a long-term P-384 key (ECDSA with SHA-256, Flower's
`sign_message` / `verify_signature`), and a client accepts a peer only if the peer's public key
is in the registry its site trusts and no key appears twice. In a deployment the long-term key
is the SuperNode's authentication key that `fedmirasol certs` writes (``node-<i>``, OpenSSH
format) and the registry is the file of registered public keys (``registry.pub``, one OpenSSH
line per site, the keys `flwr supernode register` was given); a simulation's harness provisions
one key per virtual client (`provision`).

Signed messages are `transcript`s: a domain tag and length-prefixed fields, so no two
different field lists sign the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import sign_message, verify_signature

from fedmirasol.errors import ConfigError

CURVE = ec.SECP384R1
TAG = b"fedmirasol-secagg-v1"


def transcript(kind: str, *fields: bytes | str | int | Sequence[int]) -> bytes:
    """Canonical bytes of a signed statement: tag, kind, then each field length-prefixed
    (integers as decimal, integer lists sorted and comma-joined)."""
    parts = [TAG, kind.encode()]
    for value in fields:
        if isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, (str, int)):
            parts.append(str(value).encode())
        else:
            parts.append(",".join(str(int(v)) for v in sorted(value)).encode())
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """A public key as its OpenSSH line without a comment (how registries list keys)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@functools.lru_cache(maxsize=4096)
def _public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_ssh_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("a node identity must be an elliptic-curve key")
    return key


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public`'s ECDSA signature of `message` (False for garbage)."""
    try:
        return verify_signature(_public_key(public), message, signature)
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Identity:
    """A node's long-term signing key (PEM, OpenSSH or PKCS#8 bytes: picklable for Ray) and the
    registry of public keys it accepts peers from."""

    private_pem: bytes
    registry: frozenset[bytes]

    @property
    def _key(self) -> ec.EllipticCurvePrivateKey:
        return _private_key(self.private_pem)

    @property
    def public(self) -> bytes:
        return public_bytes(self._key.public_key())

    def sign(self, message: bytes) -> bytes:
        return sign_message(self._key, message)

    def registered(self, public: bytes) -> bool:
        return public in self.registry


@functools.lru_cache(maxsize=64)
def _private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        key = serialization.load_ssh_private_key(data, password=None)
    else:
        key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("a node identity must be an elliptic-curve key")
    return key


def read_registry(path: str | Path) -> frozenset[bytes]:
    """The public keys of a registry file (one OpenSSH public key per line; ``#`` comments),
    or of every ``*.pub`` file in a folder."""
    path = Path(path)
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    keys: set[bytes] = set()
    for file in files:
        try:
            lines = file.read_text().splitlines()
        except OSError as error:
            raise ConfigError(f"cannot read the secure-aggregation registry {file}: {error}") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                keys.add(public_bytes(_public_key(b" ".join(line.encode().split()[:2]))))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{file}:{number}: not an elliptic-curve OpenSSH public key "
                                  f"({error})") from None
    if not keys:
        raise ConfigError(f"the secure-aggregation registry {path} lists no public keys")
    return frozenset(keys)


def load_identity(key_path: str | Path, registry_path: str | Path) -> Identity:
    """A site's identity: its SuperNode private key and the registry it trusts."""
    try:
        identity = Identity(Path(key_path).read_bytes(), read_registry(registry_path))
        public = identity.public
    except OSError as error:
        raise ConfigError(f"cannot read the node key {key_path}: {error}") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{key_path} is not an elliptic-curve private key: {error}") from None
    if public not in identity.registry:
        raise ConfigError(f"the node key {key_path} is not in the registry {registry_path}")
    return identity


def provision(count: int, extra_public: Iterable[bytes] = ()) -> list[Identity]:
    """`count` fresh identities sharing one registry (a simulation harness's trusted setup)."""
    keys = [ec.generate_private_key(CURVE()) for _ in range(count)]
    registry = frozenset([public_bytes(k.public_key()) for k in keys] + list(extra_public))
    return [Identity(k.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()), registry) for k in keys]


def fingerprint(public: bytes) -> str:
    """A short name of a public key for messages."""
    return hashlib.sha256(public).hexdigest()[:12]
