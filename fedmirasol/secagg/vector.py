"""A state of named arrays <-> one flat float32 vector, in an agreed key order."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def layout(state: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) order a vector follows: the state's own key order."""
    return [(name, tuple(np.shape(value))) for name, value in state.items()]


def size(spec: Sequence[tuple[str, tuple[int, ...]]]) -> int:
    return int(sum(int(np.prod(shape)) for _, shape in spec))


def flatten(state: Mapping[str, np.ndarray],
            spec: Sequence[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """The arrays of `state` in `spec` order as one float32 vector (shapes checked)."""
    out = np.empty(size(spec), np.float32)
    offset = 0
    for name, shape in spec:
        if name not in state:
            raise KeyError(f"update lacks parameter {name!r}")
        value = np.asarray(state[name])
        if tuple(value.shape) != shape:
            raise ValueError(f"parameter {name!r} has shape {value.shape}, expected {shape}")
        out[offset:offset + value.size] = value.reshape(-1)
        offset += value.size
    extra = set(state) - {name for name, _ in spec}
    if extra:
        raise KeyError(f"update has unexpected parameters, e.g. {sorted(extra)[0]!r}")
    return out


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
