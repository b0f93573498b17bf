"""The Mirasol model, its components and its named configurations."""

from __future__ import annotations

import torch

from fedmirasol.models.config import NAMED_CONFIGS, MirasolConfig, get_config
from fedmirasol.models.loss import mirasol_loss
from fedmirasol.models.mirasol import Mirasol, MirasolOutput
from fedmirasol.models.tokenizer import ByteTokenizer


def build_model(config: MirasolConfig | str, device: torch.device | str | None = None) -> Mirasol:
    """Build a Mirasol model from a config or a config name; `device="meta"` allocates nothing."""
    if isinstance(config, str):
        config = get_config(config)
    if device is None:
        return Mirasol(config)
    with torch.device(device):
        return Mirasol(config)


__all__ = [
    "NAMED_CONFIGS", "ByteTokenizer", "Mirasol", "MirasolConfig", "MirasolOutput",
    "build_model", "get_config", "mirasol_loss",
]
