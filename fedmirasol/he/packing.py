"""What a client encrypts, in which order, and how a decrypted sum is read back.

A `Layout` lists named segments of arrays; their values, each multiplied by the segment's
factor, are laid end to end after two extras (the client's weight and a count of 1), so a
sum of replies decrypts to the weight sum and the number of contributors first. The values
are cut into batches of whole ciphertexts and encrypted batch by batch (`encrypt_batches`):
no more than one batch of plain values and ciphertexts is held at a time.

Segments and how their sums become means:

- ``weight``: multiplied by the client's weight, divided by the weight sum (the weighted
  mean of the clients' values: FedAvg's aggregate of the proposed models);
- ``count``: values every client holds alike (the server optimizer's state), divided by the
  number of contributors;
- ``sampled``: summed as they are, divided by the number of clients sampled (client-level DP's
  mean, where a client that did not answer counts as a zero update).

A segment with ``transform = "sqrt"`` travels as its square root (a non-negative second-moment
estimate: CKKS's absolute error then costs it relative precision only where it is large).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np

from fedmirasol.he.errors import CapacityExceeded

Divisor = Literal["weight", "count", "sampled"]
WEIGHT, COUNT = 0, 1  # the extras' positions
EXTRAS = 2


@dataclass(frozen=True)
class Segment:
    name: str
    divisor: Divisor
    names: tuple[str, ...]  # the arrays, in order
    shapes: tuple[tuple[int, ...], ...]
    kind: str = "dict"  # the container of a strategy-state segment (record, dict, list)
    transform: Literal["none", "sqrt"] = "none"

    @property
    def size(self) -> int:
        return int(sum(np.prod(shape, dtype=np.int64) for shape in self.shapes))


@dataclass(frozen=True)
class Layout:
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        """Values encrypted: the extras and every segment."""
        return EXTRAS + sum(segment.size for segment in self.segments)

    def ciphertexts(self, per_ciphertext: int) -> int:
        return -(-self.size // per_ciphertext)

    def to_json(self) -> list[dict]:
        return [{**asdict(s), "names": list(s.names), "shapes": [list(x) for x in s.shapes]}
                for s in self.segments]

    @classmethod
    def from_json(cls, items: Sequence[Mapping]) -> "Layout":
        try:
            return cls(tuple(Segment(str(i["name"]), i["divisor"], tuple(map(str, i["names"])),
                                     tuple(tuple(int(d) for d in shape) for shape in i["shapes"]),
                                     str(i.get("kind", "dict")), i.get("transform", "none"))
                             for i in items))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed layout ({error!r})") from None

    def key(self) -> str:
        """A canonical text of the layout (replies of one round must agree on it)."""
        return json.dumps(self.to_json(), sort_keys=True)


def segment(name: str, divisor: Divisor, arrays: Mapping[str, np.ndarray], kind: str = "dict",
            transform: Literal["none", "sqrt"] = "none") -> Segment:
    return Segment(name, divisor, tuple(arrays), tuple(tuple(np.shape(a)) for a in
                                                       arrays.values()), kind, transform)


def _pieces(layout: Layout, values: Mapping[str, Mapping[str, np.ndarray]], weight: float,
            length: int) -> Iterator[np.ndarray]:
    """The values to encrypt, in order, as float64 pieces of at most `length` (a slice of one
    array at a time: no full float64 copy of a large array is made)."""
    yield np.array([weight, 1.0])
    for seg in layout.segments:
        factor = weight if seg.divisor == "weight" else 1.0
        arrays = values[seg.name]
        for name in seg.names:
            flat = np.asarray(arrays[name]).reshape(-1)
            for start in range(0, flat.size, length):
                piece = flat[start:start + length].astype(np.float64)
                if seg.transform == "sqrt":
                    np.sqrt(np.maximum(piece, 0.0, out=piece), out=piece)
                if factor != 1.0:
                    piece *= factor
                yield piece


def chunks(layout: Layout, values: Mapping[str, Mapping[str, np.ndarray]], weight: float,
           length: int, limit: float) -> Iterator[np.ndarray]:
    """The values to encrypt in chunks of `length` (the last may be shorter); CapacityExceeded
    when one (times the weight) exceeds `limit` in magnitude, ValueError when one is not
    finite."""
    buffer = np.empty(length)
    filled = 0
    for piece in _pieces(layout, values, weight, length):
        if piece.size and not np.isfinite(piece).all():
            raise ValueError("the values to encrypt hold NaN or Inf")
        if piece.size and float(np.abs(piece).max()) > limit:
            # the message goes back to the server: it names the limit, never the value
            raise CapacityExceeded(
                f"a value of this client's weighted update is above {limit:.4g}, what the "
                "CKKS scale leaves each client so that the sum cannot wrap around: "
                "lower he.scale-bits (each bit less doubles the room and the error bound), or "
                "sample fewer clients per round")
        offset = 0
        while offset < piece.size:
            take = min(length - filled, piece.size - offset)
            buffer[filled:filled + take] = piece[offset:offset + take]
            filled += take
            offset += take
            if filled == length:
                yield buffer
                buffer, filled = np.empty(length), 0
    if filled:
        yield buffer[:filled]


def encrypt_batches(layout: Layout, values: Mapping[str, Mapping[str, np.ndarray]],
                    weight: float, batch_values: int, limit: float,
                    encrypt: Callable[[np.ndarray], bytes]) -> Iterator[bytes]:
    """Each batch of `batch_values` values, encrypted (`encrypt`: a site's), in order, one
    at a time."""
    for chunk in chunks(layout, values, weight, batch_values, limit):
        yield encrypt(chunk)


@dataclass
class Sums:
    """A decrypted sum, read back into arrays (`Reader`)."""

    weight: float  # the weight sum
    count: float  # the contributors
    segments: dict[str, dict[str, np.ndarray]]  # the means, by segment and array (float64)


class Reader:
    """Reads the decrypted values of a sum in order, batch by batch, straight into the means
    (float64, so that a server step on them adds no rounding of its own): the divisors are
    the extras, which come first."""

    def __init__(self, layout: Layout, sampled: int,
                 check: Callable[[float, float], tuple[float, float]]) -> None:
        """`check(weight sum, count)`: the exact divisors (it raises when the decrypted extras
        are not a valid sum); `sampled`: the clients drawn this round."""
        self.layout, self.sampled, self.check = layout, sampled, check
        self.out = {s.name: {n: np.empty(shape) for n, shape in zip(s.names, s.shapes)}
                    for s in layout.segments}
        self._targets = [(s, name) for s in layout.segments for name in s.names]
        self._position = 0  # the next target array
        self._offset = -EXTRAS  # values already read into it (negative: extras to read)
        self._extras: list[float] = []
        self.weight = self.count = 0.0

    def _divisor(self, seg: Segment) -> float:
        return {"weight": self.weight, "count": self.count, "sampled": float(self.sampled)
                }[seg.divisor]

    def feed(self, values: np.ndarray) -> None:
        offset = 0
        while offset < len(values) and self._offset < 0:
            self._extras.append(float(values[offset]))
            offset += 1
            self._offset += 1
            if self._offset == 0:
                self.weight, self.count = self.check(self._extras[WEIGHT], self._extras[COUNT])
        while offset < len(values) and self._position < len(self._targets):
            seg, name = self._targets[self._position]
            flat = self.out[seg.name][name].reshape(-1)
            take = min(flat.size - self._offset, len(values) - offset)
            part = values[offset:offset + take] / self._divisor(seg)
            if seg.transform == "sqrt":
                part = np.square(np.maximum(part, 0.0))
            flat[self._offset:self._offset + take] = part
            offset += take
            self._offset += take
            if self._offset == flat.size:
                self._position, self._offset = self._position + 1, 0

    def result(self) -> Sums:
        if self._position < len(self._targets) or self._offset < 0:
            raise ValueError("the sum holds fewer values than its layout")
        return Sums(self.weight, self.count, self.out)
