"""A client's update, compressed, with error feedback kept in its state.

The update (the shared parameters' delta) plus the residual left from earlier rounds is
encoded by the run's codec; what the codec left out (the vector minus what the payload decodes
to) becomes the new residual, in ``state["compression-residual"]`` (mirrored with the rest of
the client's state, so a resumed run carries it on). Low-rank's warm start lives beside it in
``state["compression-memory"]``.

Under client-level DP the decoded update must keep the clip norm the accountant assumes: a
payload that decodes to more is scaled down (every codec's payload scales linearly), and the
part cut off stays in the residual. Under DP-SGD the update is DP already and everything here
is post-processing: the privacy ledger does not change.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedmirasol.compression.codec import Codec, Layout, Payload, to_payload_record
from fedmirasol.compression.registry import update_codec
from fedmirasol.config.run import RunConfig
from fedmirasol.core import vector
from fedmirasol.core.parameters import NumpyState, from_record, to_record
from fedmirasol.core.seeds import seed_for

RESIDUAL_KEY = "compression-residual"
MEMORY_KEY = "compression-memory"
ROUNDING_STREAM = 11  # seeds the codec's draws apart from training's streams
NORM_MARGIN = 1e-6  # relative room below the clip norm for float32 rounding


def residual(state: RecordDict, count: int) -> np.ndarray | None:
    """The error-feedback residual in `state`, if it has one of `count` values."""
    if RESIDUAL_KEY not in state.array_records:
        return None
    kept = from_record(state.array_records[RESIDUAL_KEY]).get("residual")
    return kept if kept is not None and kept.size == count else None


def within_norm(codec: Codec, payload: Payload, layout: Layout, decoded: np.ndarray,
                max_norm: float) -> tuple[Payload, np.ndarray]:
    """The payload scaled down so that what it decodes to is within `max_norm` (L2)."""
    norm = float(np.linalg.norm(decoded.astype(np.float64)))
    if norm <= max_norm:
        return payload, decoded
    payload = codec.scaled(payload, layout, max_norm * (1 - NORM_MARGIN) / norm)
    decoded = codec.decode(payload, layout)
    if not float(np.linalg.norm(decoded.astype(np.float64))) <= max_norm:  # cannot happen
        raise ValueError(f"the compressed update's norm exceeds the clip norm {max_norm:g}")
    return payload, decoded


def compress_update(config: RunConfig, state: RecordDict, update: NumpyState, partition_id: int,
                    server_round: int) -> ArrayRecord:
    """The update's payload under the run's codec (`compression.codec` must not be "none");
    updates the residual and the codec's memory in `state`."""
    settings = config.compression
    codec = update_codec(settings)
    if codec is None:
        raise ValueError("compression.codec is 'none': the update travels as float32 deltas")
    layout = vector.layout(update)
    values = vector.flatten(update, layout)
    carried = residual(state, values.size) if settings.error_feedback else None
    if carried is not None:
        values = values + carried
    memory = from_record(state.array_records[MEMORY_KEY]) \
        if MEMORY_KEY in state.array_records else {}
    rng = np.random.default_rng(seed_for(config.seed, server_round, partition_id,
                                         ROUNDING_STREAM))
    payload = codec.encode(values, layout, rng, memory)
    decoded = codec.decode(payload, layout)
    bound = config.secagg_max_norm()  # the client-level DP clip norm, if any
    if bound is not None and math.isfinite(bound):
        payload, decoded = within_norm(codec, payload, layout, decoded, bound)
    if settings.error_feedback:
        state[RESIDUAL_KEY] = to_record({"residual": values - decoded})
    if memory:
        state[MEMORY_KEY] = to_record(memory)
    return to_payload_record(codec, payload, layout)
