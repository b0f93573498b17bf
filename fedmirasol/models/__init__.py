"""The Mirasol model, the late-fusion baseline, their components and named configurations."""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.config import NAMED_CONFIGS, MirasolConfig, get_config
from fedmirasol.models.late_fusion import LateFusion
from fedmirasol.models.loss import mirasol_loss
from fedmirasol.models.mirasol import Mirasol, MirasolOutput
from fedmirasol.models.tokenizer import ByteTokenizer


MODEL_CLASSES: dict[str, type[nn.Module]] = {"mirasol": Mirasol, "latefusion": LateFusion}


def build_model(config: MirasolConfig | str, device: torch.device | str | None = None) -> nn.Module:
    """Build the model a config (or config name) describes: `Mirasol`, or `LateFusion` when
    `config.architecture == "latefusion"`; `device="meta"` allocates nothing."""
    if isinstance(config, str):
        config = get_config(config)
    model_class = MODEL_CLASSES[config.architecture]
    if device is None:
        return model_class(config)
    with torch.device(device):
        return model_class(config)


__all__ = [
    "MODEL_CLASSES", "NAMED_CONFIGS", "ByteTokenizer", "LateFusion", "Mirasol", "MirasolConfig", "MirasolOutput",
    "build_model", "get_config", "mirasol_loss",
]
