"""The run config's ``[compression]`` section: how updates (and optionally the model sent
down) travel, compressed (`fedmirasol.compression`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

# none: float32 deltas | quantize: stochastic uniform quantization (unbiased) | top-k: the
# largest values | random-k: values at seeded random positions | low-rank: PowerSGD-style
# rank-r factors of every weight matrix (other tensors as float32)
CODECS = ("none", "quantize", "top-k", "random-k", "low-rank")
QUANTIZATION_BITS = (1, 2, 4, 8)
DOWNLINKS = ("none", "quantize")


class CompressionConfig(Section):
    """What a client's update (and, with `downlink`, the model the server sends) is encoded
    to; the bytes on the wire shrink accordingly."""

    codec: Literal[CODECS] = "none"  # type: ignore[valid-type]
    bits: int = 8  # quantize: bits per value (1, 2, 4 or 8)
    # quantize: values per bucket, each bucket with its own float32 minimum and step
    bucket_size: int = Field(1024, ge=8)
    fraction: float = Field(0.01, gt=0.0, le=1.0)  # top-k / random-k: share of values sent
    rank: int = Field(4, ge=1)  # low-rank: rank of each weight matrix's factors
    # what a codec leaves out is kept in the client's state and added to its next update
    # (random-k without it scales the values it sends by 1/fraction instead: unbiased)
    error_feedback: bool = True
    # the model sent down: "quantize" sends the change of the clients' replica of the global
    # model (kept in their state), quantized at `downlink-bits`; a client without the
    # replica the server expects gets it whole (float32)
    downlink: Literal[DOWNLINKS] = "none"  # type: ignore[valid-type]
    downlink_bits: int = 8

    @model_validator(mode="after")
    def _check(self) -> "CompressionConfig":
        for key, bits in (("bits", self.bits), ("downlink-bits", self.downlink_bits)):
            if bits not in QUANTIZATION_BITS:
                raise ConfigError(f"config key 'compression.{key}' must be one of "
                                  f"{QUANTIZATION_BITS}, got {bits!r}")
        return self

    @property
    def enabled(self) -> bool:
        """True when anything travels compressed (up or down)."""
        return self.codec != "none" or self.downlink != "none"
