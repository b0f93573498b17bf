"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib
import itertools
from typing import ContextManager

import torch
from torch import nn


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' picks CUDA when there is a GPU, else the CPU; 'cuda' without a GPU is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available")
    return device


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """`model` moved to `device`; where all its parameters and buffers are there already,
    as they are between a CPU client's messages, it is left as it is (`Module.to` would walk
    every tensor to move none: about 1.5 ms a call at the tiny model)."""
    target = torch.device(device)
    if all(tensor.device == target
           for tensor in itertools.chain(model.parameters(), model.buffers())):
        return model
    return model.to(target)


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """bf16 autocast on a GPU that supports it; a no-op on the CPU."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
