"""Low-rank factors of every weight matrix, PowerSGD-style (Vogels et al. 2019).

A tensor with two or more axes is read as a matrix M (its first axis by the rest). One step of
power iteration from the sender's previous right factor Q (kept in its memory, random at
first) gives P = orthonormal(M Q) and Q = M^T P; P Q^T is M's rank-r approximation, and P and
Q (r x (rows + columns) values) travel instead of M. A tensor for which that is no smaller
(biases, norms, small matrices) travels whole. With error feedback the approximation error is
added to the next round's update, as in PowerSGD. The payload is one float32 ``values`` array:
for each tensor in layout order either its values, or its P then its Q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, MutableMapping

import numpy as np

from fedmirasol.compression.codec import (
    Codec, Layout, Payload, expect, expect_finite, expect_keys, size,
)


def matrix_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int] | None:
    """(rows, columns) when a tensor of `shape` travels as rank-`rank` factors, else None."""
    if len(shape) < 2:
        return None
    rows = int(shape[0])
    columns = int(np.prod(shape[1:]))
    return (rows, columns) if rank * (rows + columns) < rows * columns else None


@dataclass(frozen=True)
class LowRank(Codec):
    rank: int
    name = "low-rank"

    def _plan(self, layout: Layout) -> list[tuple[str, int, tuple[int, int] | None]]:
        """(name, values in the flat vector, matrix shape or None) per tensor."""
        return [(name, int(np.prod(shape)), matrix_shape(shape, self.rank))
                for name, shape in layout]

    def payload_size(self, layout: Layout) -> int:
        return sum(count if matrix is None else self.rank * sum(matrix)
                   for _, count, matrix in self._plan(layout))

    def encode(self, values: np.ndarray, layout: Layout, rng: np.random.Generator,
               memory: MutableMapping[str, np.ndarray]) -> Payload:
        values = np.asarray(values, np.float32)
        parts, offset = [], 0
        for name, count, matrix in self._plan(layout):
            block = values[offset:offset + count]
            offset += count
            if matrix is None:
                parts.append(block)
                continue
            rows, columns = matrix
            m = block.reshape(rows, columns).astype(np.float64)
            q = memory.get(name)
            if q is None or q.shape != (columns, self.rank):
                q = rng.standard_normal((columns, self.rank))
            p, _ = np.linalg.qr(m @ q)
            q = m.T @ p
            memory[name] = q.astype(np.float32)
            parts += [p.astype(np.float32).reshape(-1), q.astype(np.float32).reshape(-1)]
        return {"values": np.concatenate(parts) if parts else np.zeros(0, np.float32)}

    def decode(self, payload: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
        expect_keys(payload, ("values",))
        values = expect(payload, "values", np.float32, self.payload_size(layout))
        expect_finite(values, "values")
        out, offset = [], 0
        for _, count, matrix in self._plan(layout):
            if matrix is None:
                out.append(values[offset:offset + count])
                offset += count
                continue
            rows, columns = matrix
            p = values[offset:offset + rows * self.rank].reshape(rows, self.rank)
            offset += rows * self.rank
            q = values[offset:offset + columns * self.rank].reshape(columns, self.rank)
            offset += columns * self.rank
            out.append((p.astype(np.float64) @ q.T).astype(np.float32).reshape(-1))
        return np.concatenate(out) if out else np.zeros(size(layout), np.float32)

    def scaled(self, payload: Payload, layout: Layout, factor: float) -> Payload:
        """Scale the whole tensors and the P factors (P Q^T is then scaled once)."""
        values = payload["values"].copy()
        offset = 0
        for _, count, matrix in self._plan(layout):
            if matrix is None:
                values[offset:offset + count] *= np.float32(factor)
                offset += count
            else:
                rows, columns = matrix
                values[offset:offset + rows * self.rank] *= np.float32(factor)
                offset += self.rank * (rows + columns)
        return {"values": values}
