"""Key agreement, Shamir shares and their encryption: thin wrappers over Flower's building blocks.

Every client makes two ECDH key pairs per round (SECP384R1, `flwr.supercore.primitives`):
one whose agreed secrets seed the pairwise masks, one whose agreed secrets encrypt the Shamir
shares in transit through the server (Fernet). The self-mask seed and the mask private key are
split with Shamir's scheme (`flwr.common.secure_aggregation.crypto.shamir`).

A rebuilt secret is checked before it is used: a dropout's mask private key against the public
key it published, a survivor's self-mask seed against the SHA-256 commitment it published with
its keys. A share that does not fit is left out (other subsets of the revealed shares are
tried), so a wrong share can neither corrupt the sum silently nor, with enough honest shares,
fail the round.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from typing import Callable, Sequence

from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

SEED_BYTES = 32


def new_key_pair() -> tuple[bytes, bytes]:
    """(private key, public key), serialized."""
    private, public = generate_key_pairs()
    return private_key_to_bytes(private), public_key_to_bytes(public)


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def _agree(private: bytes, public: bytes) -> bytes:
    return generate_shared_key(bytes_to_private_key(private), bytes_to_public_key(public))


def pairwise_seed(private: bytes, public: bytes) -> bytes:
    """The 32-byte secret two clients agree on (same from either side)."""
    return base64.urlsafe_b64decode(_agree(private, public))


def split_secret(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """Shamir shares of `secret`, one per holder (any `threshold` of them rebuild it)."""
    shares = create_shares(secret, threshold, len(holders))
    return dict(zip(holders, shares))


def rebuild_secret(shares: Sequence[bytes]) -> bytes:
    return combine_shares(list(shares))


def seed_commitment(seed: bytes) -> bytes:
    """SHA-256 of a self-mask seed: published with the keys, checked after reconstruction."""
    return hashlib.sha256(seed).digest()


def public_key_of(private: bytes) -> bytes:
    """The serialized public key of a serialized private key."""
    return public_key_to_bytes(bytes_to_private_key(private).public_key())


def rebuild_verified(shares: Sequence[tuple[int, bytes]], threshold: int,
                     fits: Callable[[bytes], bool], max_subsets: int = 2000
                     ) -> tuple[bytes | None, list[int]]:
    """A secret rebuilt from `threshold` of the (holder, share) pairs that `fits` accepts, and
    the holders whose shares disagree with it; (None, []) when no subset tried rebuilds one."""

    def attempt(subset: Sequence[tuple[int, bytes]]) -> bytes | None:
        try:
            secret = rebuild_secret([share for _, share in subset])
            return secret if fits(secret) else None
        except (ValueError, TypeError, IndexError):  # a malformed share does not combine
            return None

    for subset in itertools.islice(itertools.combinations(shares, threshold), max_subsets):
        secret = attempt(subset)
        if secret is not None:
            trusted = list(subset[:-1])
            bad = [holder for holder, share in shares if (holder, share) not in subset
                   and attempt(trusted + [(holder, share)]) != secret]
            return secret, bad
    return None, []


def seal_shares(private: bytes, public: bytes, src: int, dst: int, seed_share: bytes,
                key_share: bytes) -> bytes:
    """Encrypt the two shares `src` gives `dst` under their agreed key."""
    return encrypt(_agree(private, public),
                   share_keys_plaintext_concat(src, dst, seed_share, key_share))


def open_shares(private: bytes, public: bytes, src: int, dst: int,
                ciphertext: bytes) -> tuple[bytes, bytes]:
    """Decrypt shares from `src`; raise if they were addressed to someone else."""
    got_src, got_dst, seed_share, key_share = share_keys_plaintext_separate(
        decrypt(_agree(private, public), ciphertext))
    if (got_src, got_dst) != (src, dst):
        raise ValueError(f"shares claim to come from {got_src} for {got_dst}, expected "
                         f"{src} for {dst}")
    return seed_share, key_share


def neighbours(node: int, nodes: Sequence[int], num_neighbours: int) -> list[int]:
    """SecAgg+'s communication graph: `node`'s neighbours on a ring of the sorted nodes
    (num_neighbours // 2 on each side); 0, or a ring too small, means every other node."""
    ring = sorted(nodes)
    half = num_neighbours // 2
    if num_neighbours == 0 or 2 * half >= len(ring) - 1:
        return [other for other in ring if other != node]
    at = ring.index(node)
    return sorted({ring[(at + step) % len(ring)] for step in range(-half, half + 1) if step})


def share_group(owner: int, nodes: Sequence[int], num_neighbours: int) -> set[int]:
    """The clients that hold `owner`'s shares: itself and its SecAgg+ neighbours."""
    return set(neighbours(owner, nodes, num_neighbours)) | {owner}
