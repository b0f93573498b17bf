"""The layout of a state of named arrays as one flat vector, in an agreed key order (secure
aggregation masks it, codecs compress it)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def layout(state: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) order a vector follows: the state's own key order."""
    return [(name, tuple(np.shape(value))) for name, value in state.items()]


def size(spec: Sequence[tuple[str, tuple[int, ...]]]) -> int:
    return int(sum(int(np.prod(shape)) for _, shape in spec))


def unflatten(vector: np.ndarray,
              spec: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Views of `vector` shaped by `spec`."""
    if vector.size != size(spec):
        raise ValueError(f"vector has {vector.size} values, the layout {size(spec)}")
    state, offset = {}, 0
    for name, shape in spec:
        count = int(np.prod(shape))
        state[name] = vector[offset:offset + count].reshape(shape)
        offset += count
    return state


def flatten(state: Mapping[str, np.ndarray],
            spec: Sequence[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """The arrays of `state` named by `spec`, one after the other, as one float32 vector."""
    if not spec:
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(state[name], np.float32).reshape(-1)
                           for name, _ in spec])
