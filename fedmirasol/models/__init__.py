"""The Mirasol model, the late-fusion baseline, their components and named configurations.

The configs (`fedmirasol.models.config`) import no torch; the model classes are loaded on first
use (PEP 562 module `__getattr__`), so reading a config or building the command line parser
does not pay torch's start-up (seconds).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedmirasol.models.config import NAMED_CONFIGS, MirasolConfig, get_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedmirasol.models.late_fusion import LateFusion
    from fedmirasol.models.leaf_cnn import LeafCNN
    from fedmirasol.models.leaf_logreg import LeafLogReg
    from fedmirasol.models.leaf_lstm import LeafLSTM
    from fedmirasol.models.loss import mirasol_loss
    from fedmirasol.models.mirasol import Mirasol, MirasolOutput
    from fedmirasol.models.tokenizer import ByteTokenizer

# name -> module that defines it, imported when the name is first looked up
_LAZY = {
    "LateFusion": "fedmirasol.models.late_fusion",
    "mirasol_loss": "fedmirasol.models.loss",
    "Mirasol": "fedmirasol.models.mirasol",
    "MirasolOutput": "fedmirasol.models.mirasol",
    "ByteTokenizer": "fedmirasol.models.tokenizer",
    "LeafCNN": "fedmirasol.models.leaf_cnn",
    "LeafLSTM": "fedmirasol.models.leaf_lstm",
    "LeafLogReg": "fedmirasol.models.leaf_logreg",
}
# architecture -> the class that builds it; each is imported only when a model of it is built
# (LEAF's LSTM imports Opacus, a second of start-up that no other model should pay)
ARCHITECTURE_CLASSES = {"mirasol": "Mirasol", "latefusion": "LateFusion", "leaf-cnn": "LeafCNN",
                        "leaf-lstm": "LeafLSTM", "leaf-logreg": "LeafLogReg"}


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":
        value: Any = {arch: __getattr__(cls) for arch, cls in ARCHITECTURE_CLASSES.items()}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def build_model(config: MirasolConfig | str, device: torch.device | str | None = None) -> nn.Module:
    """Build the model a config (or config name) describes, by `config.architecture`: `Mirasol`,
    `LateFusion`, or one of LEAF's reference models; `device="meta"` allocates nothing."""
    import torch

    if isinstance(config, str):
        config = get_config(config)
    name = ARCHITECTURE_CLASSES[config.architecture]
    model_class = globals().get(name) or __getattr__(name)
    if device is None:
        return model_class(config)
    with torch.device(device):
        return model_class(config)


__all__ = [
    "MODEL_CLASSES", "NAMED_CONFIGS", "ByteTokenizer", "LateFusion", "LeafCNN", "LeafLSTM",
    "LeafLogReg", "Mirasol", "MirasolConfig", "MirasolOutput",
    "build_model", "get_config", "mirasol_loss",
]
