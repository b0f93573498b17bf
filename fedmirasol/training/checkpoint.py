"""Saving and loading model checkpoints together with their config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedmirasol.models import Mirasol, MirasolConfig, build_model


def save_checkpoint(path: Path, model: Mirasol, config: MirasolConfig, extra: dict[str, Any] | None = None) -> None:
    """Write the model's weights, its config and any extra fields to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config.to_dict(), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[Mirasol, dict[str, Any]]:
    """Rebuild the model stored at `path`; returns (model, the checkpoint's other fields)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = build_model(MirasolConfig.from_dict(payload.pop("config"))).to(device)
    model.load_state_dict(payload.pop("state_dict"))
    return model, payload
