"""The codec interface and the payload every codec travels in.

A codec turns the flat float32 vector of an update (the shared parameters one after the other,
`fedmirasol.core.vector`) into a few packed arrays and back. The payload is an ArrayRecord
whose arrays are exactly those (uint8 codes, float32 scales or values, positions) plus a
``header`` (JSON bytes: the codec, its settings and a digest of the layout), so Flower sends
the packed bytes and nothing else. The receiver knows the layout (the global model's names and
shapes) and the codec's settings (the run config), checks every array against them and refuses
a payload that does not fit (`MalformedPayload`), naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, MutableMapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fedmirasol.core import vector

Layout = Sequence[tuple[str, tuple[int, ...]]]
Payload = dict[str, np.ndarray]
HEADER = "header"


class MalformedPayload(ValueError):
    """A payload that does not decode to an update of the expected layout."""


class Codec(ABC):
    """One compression algorithm: a frozen dataclass whose fields are the run config's values
    it depends on (`settings`)."""

    name: ClassVar[str]

    def settings(self) -> dict[str, Any]:
        """What sender and receiver must agree on (goes into the header)."""
        return {field.name.replace("_", "-"): getattr(self, field.name)
                for field in dataclasses.fields(self)}  # type: ignore[arg-type]

    @abstractmethod
    def encode(self, values: np.ndarray, layout: Layout, rng: np.random.Generator,
               memory: MutableMapping[str, np.ndarray]) -> Payload:
        """The arrays that carry `values` (float32, the layout's size). `memory`: arrays the
        codec keeps on the sender between rounds (low-rank's warm start), updated in place."""

    @abstractmethod
    def decode(self, payload: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
        """The float32 vector `payload` stands for; `MalformedPayload` when it does not fit."""

    @abstractmethod
    def scaled(self, payload: Payload, layout: Layout, factor: float) -> Payload:
        """A payload that decodes to `factor` times what `payload` decodes to."""


def layout_digest(layout: Layout) -> str:
    """A short digest of the names and shapes, so a payload for another model is refused."""
    text = ";".join(f"{name}:{','.join(map(str, shape))}" for name, shape in layout)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_payload_record(codec: Codec, payload: Payload, layout: Layout) -> ArrayRecord:
    """The ArrayRecord that travels: the header, then the codec's arrays."""
    header = json.dumps({"codec": codec.name, "settings": codec.settings(),
                         "layout": layout_digest(layout)}, sort_keys=True)
    arrays = {HEADER: np.frombuffer(header.encode(), np.uint8), **payload}
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def is_payload(record: ArrayRecord) -> bool:
    """Whether `record` is a codec's payload (rather than plain float32 arrays)."""
    return HEADER in record


def from_payload_record(codec: Codec, record: ArrayRecord, layout: Layout) -> np.ndarray:
    """Decode a received payload, after checking its header against `codec` and `layout`."""
    if HEADER not in record:
        raise MalformedPayload(f"the update is not compressed, the run's codec is {codec.name!r}")
    arrays = {key: array.numpy() for key, array in record.items()}
    header_bytes = arrays.pop(HEADER)
    try:
        header = json.loads(header_bytes.astype(np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError):
        raise MalformedPayload("the payload's header is not JSON") from None
    if not isinstance(header, dict):
        raise MalformedPayload("the payload's header is not a JSON object")
    expected = {"codec": codec.name, "settings": codec.settings(),
                "layout": layout_digest(layout)}
    for key, value in expected.items():
        if header.get(key) != value:
            raise MalformedPayload(f"the payload's {key} is {header.get(key)!r}, the run's is "
                                   f"{value!r}")
    return codec.decode(arrays, layout)


def expect(payload: Mapping[str, np.ndarray], key: str, dtype: Any, length: int) -> np.ndarray:
    """`payload[key]` as a flat array, checked to be of `dtype` and `length`."""
    if key not in payload:
        raise MalformedPayload(f"the payload lacks {key!r}")
    array = payload[key]
    if array.dtype != np.dtype(dtype) or array.ndim != 1 or array.size != length:
        raise MalformedPayload(f"the payload's {key!r} is {array.dtype}{list(array.shape)}, "
                               f"expected {np.dtype(dtype)}[{length}]")
    return array


def expect_keys(payload: Mapping[str, np.ndarray], keys: Sequence[str]) -> None:
    extra = sorted(set(payload) - set(keys))
    if extra:
        raise MalformedPayload(f"the payload has unexpected arrays {extra}")


def expect_finite(values: np.ndarray, key: str) -> None:
    if not np.isfinite(values).all():
        raise MalformedPayload(f"the payload's {key!r} holds "
                               f"{int((~np.isfinite(values)).sum())} NaN/Inf value(s)")


def size(layout: Layout) -> int:
    return vector.size(layout)
