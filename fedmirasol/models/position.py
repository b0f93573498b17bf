"""Fixed sin-cos position embeddings that work for any width."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def sincos_1d(positions: torch.Tensor, width: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Embed positions (any shape) into `width` features: sines then cosines.

    An odd width gets one trailing zero feature, so every width works.
    """
    positions = positions.to(torch.float32)
    half = width // 2
    if half == 0:
        return torch.zeros(*positions.shape, width)
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = positions[..., None] * frequencies
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if width % 2:
        embedding = torch.cat([embedding, torch.zeros(*positions.shape, 1)], dim=-1)
    return embedding


def split_width(width: int, fractions: Sequence[float]) -> list[int]:
    """Split `width` into parts proportional to `fractions`, summing exactly to `width`."""
    parts = [int(width * f) for f in fractions[:-1]]
    return parts + [width - sum(parts)]


def sincos_nd(coordinates: torch.Tensor, width: int, fractions: Sequence[float]) -> torch.Tensor:
    """Embed ``... x K`` coordinates, giving axis k the share `fractions[k]` of `width`."""
    if coordinates.shape[-1] != len(fractions):
        raise ValueError(
            f"{coordinates.shape[-1]} coordinate axes but {len(fractions)} width fractions"
        )
    widths = split_width(width, fractions)
    return torch.cat(
        [sincos_1d(coordinates[..., k], w) for k, w in enumerate(widths)], dim=-1
    )


def sincos_3d(coordinates: torch.Tensor, width: int) -> torch.Tensor:
    """(time, height, width) coordinates: a third of the features for time, two thirds for space."""
    return sincos_nd(coordinates, width, (1 / 3, 1 / 3, 1 / 3))


def sincos_2d(coordinates: torch.Tensor, width: int) -> torch.Tensor:
    """Two coordinates (e.g. spectrogram time and frequency), half the features each."""
    return sincos_nd(coordinates, width, (0.5, 0.5))


def patch_centres(grid: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """``(prod grid) x len(grid)`` centres of patches of size `patch` taken every `stride`."""
    axes = [torch.arange(n) * st + pt // 2 for n, pt, st in zip(grid, patch, stride)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
