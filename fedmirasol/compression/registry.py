"""The codecs by name (`compression.codec`), built from the run config's section."""

from __future__ import annotations

from typing import Callable

from fedmirasol.compression.codec import Codec
from fedmirasol.compression.lowrank import LowRank
from fedmirasol.compression.quantize import Quantize
from fedmirasol.compression.sparse import RandomK, TopK
from fedmirasol.config.compression import CompressionConfig

CODECS: dict[str, Callable[[CompressionConfig], Codec]] = {
    Quantize.name: lambda c: Quantize(c.bits, c.bucket_size),
    TopK.name: lambda c: TopK(c.fraction),
    RandomK.name: lambda c: RandomK(c.fraction, unbiased=not c.error_feedback),
    LowRank.name: lambda c: LowRank(c.rank),
}


def update_codec(config: CompressionConfig) -> Codec | None:
    """The codec of the run's updates (None: they travel as float32 deltas)."""
    return None if config.codec == "none" else CODECS[config.codec](config)


def downlink_codec(config: CompressionConfig) -> Codec | None:
    """The codec of the changes of the model sent down (None: the model travels whole)."""
    if config.downlink == "none":
        return None
    return Quantize(config.downlink_bits, config.bucket_size)
