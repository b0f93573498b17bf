"""A malicious server around the real protocol code.

`MaliciousServer` runs the library's own server driver with its safety checks switched off (a
malicious server does not abort its own attack), edits the messages it sends stage by stage,
records everything it sends and receives, and then does what an attacker would: rebuilds every
secret it can from the shares the clients revealed and tries to strip one client's masks off
its masked vector (`recover`). The honest clients are the real `fedmirasol.secagg.client`
handlers; a test passes when they refuse (or the round fails by name) and `recover` yields
nothing close to the victim's update.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
from flwr.app import Message

from fedmirasol.secagg import keys, protocol
from fedmirasol.secagg.masking import apply_mask
from fedmirasol.secagg.server import SecureAggregator

Edit = Callable[[Message], None]
REFUSED = "secure aggregation refused"


def record(message: Message):  # noqa: ANN201 - a ConfigRecord
    return message.content.config_records[protocol.RECORD]


class MaliciousServer:
    """Wraps `grid`: `on(stage, edit, nodes)` edits that stage's outgoing messages."""

    def __init__(self, grid) -> None:  # noqa: ANN001
        self.grid = grid
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.edits: dict[str, list[tuple[Edit, set[int] | None]]] = defaultdict(list)
        self.mask_keys: dict[int, bytes] = {}  # private mask keys it learned
        self.seeds: dict[int, bytes] = {}  # self-mask seeds it learned
        original = grid.send_and_receive

        def send(messages, timeout=None):  # noqa: ANN001, ANN202
            messages = list(messages)
            for message in messages:
                for edit, nodes in self.edits.get(message.metadata.message_type, ()):
                    if nodes is None or message.metadata.dst_node_id in nodes:
                        edit(message)
            self.sent += messages
            replies = list(original(messages, timeout=timeout))
            self.received += replies
            return replies

        grid.send_and_receive = send

    def on(self, stage: str, edit: Edit, nodes: Sequence[int] | None = None) -> None:
        self.edits[stage].append((edit, None if nodes is None else set(nodes)))

    def run(self, driver: SecureAggregator, messages: list[Message]):  # noqa: ANN201
        """Run the library's driver with its own checks off; what it returns (a failed or
        crashed driver is fine: the attacker keeps what it saw)."""
        driver._require = lambda condition, reason: None  # type: ignore[method-assign]
        driver._check_holders = lambda *args, **kwargs: None  # type: ignore[method-assign]
        try:
            return driver.run(self.grid, messages, 10, 1)
        except Exception:  # noqa: BLE001 - its own bookkeeping may break under its lies
            return None

    # -- what it saw ------------------------------------------------------------------
    def sent_to(self, node: int, stage: str) -> Message | None:
        found = [m for m in self.sent if m.metadata.dst_node_id == node
                 and m.metadata.message_type == stage]
        return found[-1] if found else None

    def reply_from(self, node: int, stage: str) -> Message | None:
        found = [m for m in self.received if m.metadata.src_node_id == node
                 and m.metadata.message_type == stage and not m.has_error()]
        return found[-1] if found else None

    def refusals(self) -> dict[int, str]:
        """Node -> reason of every honest refusal it received."""
        return {m.metadata.src_node_id: str(m.error.reason) for m in self.received
                if m.has_error() and REFUSED in str(m.error.reason)}

    # -- the attack -------------------------------------------------------------------
    def learn_from_unmask(self) -> None:
        """Rebuild every self-mask seed and mask key for which the clients revealed enough
        shares (the kind of a share is the one it asked that holder for)."""
        seed_shares: dict[int, list[bytes]] = defaultdict(list)
        key_shares: dict[int, list[bytes]] = defaultdict(list)
        for reply in self.received:
            if reply.has_error() or reply.metadata.message_type != protocol.UNMASK:
                continue
            holder = reply.metadata.src_node_id
            asked = record(self.sent_to(holder, protocol.UNMASK))
            active = {int(n) for n in asked["active"]}
            for owner, share in zip(record(reply)["nodes"], record(reply)["shares"]):
                (seed_shares if int(owner) in active else key_shares)[int(owner)].append(share)
        for owner, shares in seed_shares.items():
            commitment = self._keys_field(owner, "seed-commitment")
            secret = self._rebuild(owner, shares,
                                   lambda s: hashlib.sha256(s).digest() == commitment)
            if secret is not None:
                self.seeds[owner] = secret
        for owner, shares in key_shares.items():
            public = self._keys_field(owner, "pk-mask")
            secret = self._rebuild(owner, shares, lambda s: keys.public_key_of(s) == public)
            if secret is not None:
                self.mask_keys[owner] = secret

    def _keys_field(self, node: int, key: str) -> bytes | None:
        reply = self.reply_from(node, protocol.KEYS)
        return record(reply)[key] if reply is not None else None

    def _rebuild(self, owner: int, shares: list[bytes],
                 fits: Callable[[bytes], bool]) -> bytes | None:
        sent = self.sent_to(owner, protocol.SHARES)
        threshold = int(record(sent)["threshold"]) if sent is not None else 1
        for subset in itertools.combinations(shares, min(threshold, len(shares))):
            try:
                secret = keys.rebuild_secret(list(subset))
            except Exception:  # noqa: BLE001 - shares that do not combine
                continue
            try:
                if fits(secret):
                    return secret
            except Exception:  # noqa: BLE001 - not a key at all
                continue
        return None

    def recover(self, victim: int, weight: int, stage: str = protocol.MASK
                ) -> np.ndarray | None:
        """The victim's quantized update (flat floats) if every mask on its masked vector
        can be stripped with what was learned, else None."""
        self.learn_from_unmask()
        reply, sent = self.reply_from(victim, stage), self.sent_to(victim, stage)
        if reply is None or victim not in self.seeds:
            return None
        vector = reply.content.array_records[protocol.MASKED][protocol.VECTOR].numpy().copy()
        apply_mask(vector, self.seeds[victim], -1)
        shares = record(self.sent_to(victim, protocol.SHARES))
        seen_keys = dict(zip((int(n) for n in shares["nodes"]), shares["pk-mask"]))
        own_public = seen_keys[victim]
        for peer in (int(p) for p in record(sent)["src"]):
            if peer == victim:
                continue
            if victim in self.mask_keys:
                seed = keys.pairwise_seed(self.mask_keys[victim], seen_keys[peer])
            elif peer in self.mask_keys:
                seed = keys.pairwise_seed(self.mask_keys[peer], own_public)
            else:
                return None  # a mask it cannot remove
            apply_mask(vector, seed, -1 if victim < peer else 1)
        bits, bound, size = int(record(sent)["bits"]), float(record(sent)["bound"]), \
            int(record(sent)["size"])
        signed = vector.view(np.int64 if vector.dtype == np.uint64 else np.int32)[:size]
        return signed.astype(np.float64) / (2.0 ** (bits - 1) / bound * weight)


def leaked(recovered: np.ndarray | None, update: dict[str, np.ndarray], bound: float = 1.0,
           bits: int = 16) -> bool:
    """Whether `recovered` is the update to within a few quantization steps."""
    if recovered is None:
        return False
    flat = np.concatenate([v.ravel() for v in update.values()]).astype(np.float64)
    return recovered.shape == flat.shape and \
        float(np.abs(recovered - flat).max()) < 4 * bound / 2 ** (bits - 1)
