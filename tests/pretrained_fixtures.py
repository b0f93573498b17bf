"""A stand-in for `fedmirasol train --public`'s checkpoint, for configs that name one."""

from __future__ import annotations

from pathlib import Path

from fedmirasol.models import build_model, get_config
from fedmirasol.training.checkpoint import save_checkpoint


def tiny_checkpoint(directory: Path) -> Path:
    """A tiny-model checkpoint at `directory`/best.pt (fresh weights: only its format matters)."""
    path = directory / "best.pt"
    save_checkpoint(path, build_model(get_config("tiny")), get_config("tiny"))
    return path
