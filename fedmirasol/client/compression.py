"""The client's side of compressed communication (`fedmirasol.compression`): the global model a
message carries (through the downlink replica when the run compresses the downlink), and the
seal that encodes the update at the release point when it compresses updates."""

from __future__ import annotations

import functools

from flwr.app import ArrayRecord, Context, Message, RecordDict

from fedmirasol.client.release import Seal
from fedmirasol.compression.downlink import open_model
from fedmirasol.compression.registry import downlink_codec
from fedmirasol.compression.uplink import compress_update
from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState


def open_global(message: Message, context: Context, config: RunConfig) -> NumpyState:
    """The global shared parameters `message` carries."""
    return open_model(message.content, context.state, downlink_codec(config.compression))


def _compressed(config: RunConfig, state: RecordDict, partition_id: int, server_round: int,
                update: NumpyState, num_examples: int) -> ArrayRecord:
    return compress_update(config, state, update, partition_id, server_round)


def update_seal(config: RunConfig, state: RecordDict, partition_id: int,
                server_round: int) -> Seal | None:
    """How the update leaves under `compression.codec` (None: as float32 deltas)."""
    if config.compression.codec == "none":
        return None
    return functools.partial(_compressed, config, state, partition_id, server_round)
