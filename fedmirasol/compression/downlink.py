"""The compressed downlink: every client keeps a replica of the global model, and the server
sends only the replica's change, quantized.

The server keeps the replica R (what the clients hold) beside the global model G. When G
changes, the change G - R is quantized and R moves by what that decodes to (so the error of one
round is part of the next round's change: nothing is lost, as with error feedback); the
replica's version goes up by one. A message then carries, in ``arrays``:

- ``change``: the quantized change from version v-1 to v, for a node that acknowledged v-1;
- ``same``: nothing, for a node that holds v already (it evaluated, now it trains);
- ``whole``: R itself (float32), for a node whose replica the server does not know (its first
  message, a node that failed or did not answer, a resumed server).

and in the ``downlink`` config record the kind, the version (and the base version of a change)
and a digest of R. The client checks that it holds the base, applies the change with the same
float32 arithmetic, and checks the digest; anything else is an error reply (the server then
sends it R whole next time). Clients train and evaluate from R; the server's G moves by their
updates, so G never suffers the downlink's rounding.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedmirasol.compression.codec import Codec, from_payload_record, to_payload_record
from fedmirasol.core import vector
from fedmirasol.core.parameters import NumpyState, from_record, to_record

RECORD = "downlink"  # the config record that says what `arrays` holds
REPLICA_KEY = "compression-replica"  # the client's replica (arrays), in context.state
VERSION_KEY = "compression-replica-version"  # its version and digest (config record)
WHOLE, CHANGE, SAME = "whole", "change", "same"


class ReplicaMismatch(ValueError):
    """The client does not hold the replica the server's change applies to."""


def digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, np.float32).tobytes()).hexdigest()[:32]


class DownlinkSender:
    """The server's half: the replica, its version, and the version each node holds."""

    def __init__(self, codec: Codec, seed: int) -> None:
        self.codec = codec
        self.rng = np.random.default_rng(seed)
        self.layout: list[tuple[str, tuple[int, ...]]] = []
        self.replica: np.ndarray | None = None  # flat float32
        self.version = 0
        self.change: ArrayRecord | None = None  # from version - 1 to version
        self.target = ""  # digest of the global model the replica last moved towards
        self.holders: dict[int, int] = {}  # node -> version it acknowledged

    def update(self, model: NumpyState) -> None:
        """Move the replica towards `model` if it changed since the last call."""
        layout = vector.layout(model)
        flat = vector.flatten(model, layout)
        target = digest(flat)
        if target == self.target and layout == self.layout:
            return
        if self.replica is None or layout != self.layout:
            self.layout, self.replica, self.change = layout, flat, None
        else:
            payload = self.codec.encode(flat - self.replica, layout, self.rng, {})
            self.replica = self.replica + self.codec.decode(payload, layout)
            self.change = to_payload_record(self.codec, payload, layout)
        self.version += 1
        self.target = target

    def content(self, node: int, content: RecordDict) -> RecordDict:
        """`content` (a strategy's message) with ``arrays`` replaced for `node`."""
        assert self.replica is not None, "update() first"
        held = self.holders.get(node)
        record = {"version": self.version, "digest": digest(self.replica)}
        if held == self.version:
            arrays, record["kind"] = ArrayRecord(), SAME
        elif held == self.version - 1 and self.change is not None:
            arrays, record["kind"], record["base"] = self.change, CHANGE, held
        else:
            arrays = to_record(vector.unflatten(self.replica, self.layout))
            record["kind"] = WHOLE
        out = RecordDict({key: value for key, value in content.items() if key != "arrays"})
        out["arrays"] = arrays
        out[RECORD] = ConfigRecord(record)
        return out

    def encode(self, model: NumpyState, messages: list[Message]) -> list[Message]:
        """The strategy's `messages`, each given its own content: what its node needs of
        `model`."""
        self.update(model)
        for message in messages:
            message.content = self.content(message.metadata.dst_node_id, message.content)
        return messages

    def acknowledge(self, messages: Iterable[Message], replies: Iterable[Message]) -> None:
        """A node that answered without error holds the current version; any other node the
        messages went to gets the replica whole next time."""
        answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
        for message in messages:
            node = message.metadata.dst_node_id
            if node in answered:
                self.holders[node] = self.version
            else:
                self.holders.pop(node, None)


def open_model(content: RecordDict, state: RecordDict, codec: Codec | None) -> NumpyState:
    """The client's half: the global model a message carries (plain, or through the replica
    in `state`, which is brought up to date)."""
    arrays = content.array_records.get("arrays", ArrayRecord())
    record = content.config_records.get(RECORD)
    if record is None:
        return from_record(arrays)
    if codec is None:
        raise ValueError("the server sent a compressed model but the run's compression."
                         "downlink is 'none'")
    kind, version = str(record["kind"]), int(record["version"])
    if kind == WHOLE:
        model = {name: np.asarray(value, np.float32) for name, value in
                 from_record(arrays).items()}
        layout = vector.layout(model)
        flat = vector.flatten(model, layout)
    else:
        if REPLICA_KEY not in state.array_records or VERSION_KEY not in state.config_records:
            raise ReplicaMismatch("the server sent a change of the model replica but this "
                                  "client holds none")
        held = int(state.config_records[VERSION_KEY]["version"])
        wanted = int(record["base"]) if kind == CHANGE else version
        if held != wanted:
            raise ReplicaMismatch(f"the server's {kind!r} message expects replica version "
                                  f"{wanted}, this client holds {held}")
        model = from_record(state.array_records[REPLICA_KEY])
        layout = vector.layout(model)
        flat = vector.flatten(model, layout)
        if kind == CHANGE:
            flat = flat + from_payload_record(codec, arrays, layout)
    if digest(flat) != str(record["digest"]):
        raise ReplicaMismatch("the model replica's digest differs from the server's")
    model = vector.unflatten(flat, layout)
    state[REPLICA_KEY] = to_record(model)
    state[VERSION_KEY] = ConfigRecord({"version": version})
    return model
