"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' picks CUDA when there is a GPU, else the CPU; 'cuda' without a GPU is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available")
    return device


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast on a GPU that supports it; a no-op on the CPU."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
