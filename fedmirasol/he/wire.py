"""How encrypted values travel: a header and the ciphertext batches, as uint8 arrays.

A client's encrypted reply and the server's encrypted global state (the sum of the round's
replies, which the server holds instead of a model and sends with its next messages) have the
same form: ``he.header`` (JSON: the key id, the layout, the ciphertext count, and for a sum the
round, the contributors, the clients sampled and an id) and one array per batch of
ciphertexts (``he.batch.00000``, ...), each the concatenation of SEAL serializations. Flower
streams such arrays; checkpoints store them as they are (safetensors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from fedmirasol.he.packing import Layout

HEADER_KEY = "he.header"
BATCH_PREFIX = "he.batch."
SAMPLED_KEY = "he-sampled"  # train config: the clients drawn (how many replies may be summed)
FORMAT = 1


@dataclass(frozen=True)
class Header:
    key_id: str
    layout: Layout
    ciphertexts: int  # all batches together
    batch: int  # ciphertexts per batch (the last may hold fewer)
    # a sum's (the server's state):
    round: int = 0  # the round whose replies it sums
    contributors: int = 0
    sampled: int = 0
    state_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batches(self) -> int:
        return -(-self.ciphertexts // self.batch)

    def summed(self, server_round: int, contributors: int, sampled: int, state_id: str
               ) -> "Header":
        return replace(self, round=server_round, contributors=contributors, sampled=sampled,
                       state_id=state_id)

    def to_array(self) -> np.ndarray:
        text = json.dumps({"format": FORMAT, "key-id": self.key_id,
                           "layout": self.layout.to_json(), "ciphertexts": self.ciphertexts,
                           "batch": self.batch, "round": self.round,
                           "contributors": self.contributors, "sampled": self.sampled,
                           "state-id": self.state_id, "extra": self.extra}, sort_keys=True)
        return np.frombuffer(text.encode(), np.uint8).copy()

    @classmethod
    def from_array(cls, array: np.ndarray) -> "Header":
        try:
            data = json.loads(np.asarray(array, np.uint8).tobytes().decode())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            header = cls(str(data["key-id"]), Layout.from_json(data["layout"]),
                         int(data["ciphertexts"]), int(data["batch"]), int(data["round"]),
                         int(data["contributors"]), int(data["sampled"]), str(data["state-id"]),
                         dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"malformed {HEADER_KEY!r} ({error})") from None
        if header.ciphertexts < 1 or header.batch < 1:
            raise ValueError(f"malformed {HEADER_KEY!r} (no ciphertexts)")
        return header


def batch_key(index: int) -> str:
    return f"{BATCH_PREFIX}{index:05d}"


def is_encrypted(arrays: Mapping[str, Any]) -> bool:
    """Whether `arrays` (a numpy state or an ArrayRecord) hold encrypted values."""
    return HEADER_KEY in arrays


def pack(header: Header, batches: Iterable[bytes],
         into: Callable[[np.ndarray], Any] = lambda array: array) -> dict[str, Any]:
    """The arrays that carry `batches` (a numpy state; `into`: what each array becomes as it
    is made, e.g. Flower's `Array`, so that a batch's bytes can go before the next is made)."""
    arrays = {HEADER_KEY: into(header.to_array())}
    for index, data in enumerate(batches):
        arrays[batch_key(index)] = into(np.frombuffer(data, np.uint8))
    if len(arrays) - 1 != header.batches:
        raise ValueError(f"{len(arrays) - 1} batches where the header counts {header.batches}")
    return arrays


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def read_header(arrays: Mapping[str, Any]) -> Header:
    """The header of encrypted arrays, checked against the batches present (ValueError)."""
    if HEADER_KEY not in arrays:
        raise ValueError(f"no {HEADER_KEY!r} array")
    header = Header.from_array(_numpy(arrays[HEADER_KEY]))
    expected = {HEADER_KEY} | {batch_key(i) for i in range(header.batches)}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ValueError(f"the arrays do not match the header's {header.batches} batches "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    return header


def batch_bytes(arrays: Mapping[str, Any], index: int) -> bytes:
    """One batch's ciphertexts (ValueError when it is not a uint8 vector)."""
    array = _numpy(arrays[batch_key(index)])
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{batch_key(index)!r} is {array.dtype} of shape {array.shape}, not "
                         "a uint8 vector")
    return array.tobytes()
