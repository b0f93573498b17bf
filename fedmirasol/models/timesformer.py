"""TimeSformer (Bertasius et al., ICML 2021): a ViT over frames with divided space-time attention.

Each frame is cut into square patches; every block attends across frames at each patch
position (temporal), then within each frame together with the CLS token (spatial), then
applies an MLP. The CLS token's final state is the clip's feature.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import Attention, FeedForward, LearnedTokens
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.position import sincos_3d


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: temporal attention, spatial attention (with CLS), MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_temporal = nn.LayerNorm(width)
        self.temporal_attention = Attention(width, heads, dropout)
        self.temporal_fc = nn.Linear(width, width)
        self.norm_spatial = nn.LayerNorm(width)
        self.spatial_attention = Attention(width, heads, dropout)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = FeedForward(width, mlp_ratio, dropout)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x d`` CLS and ``B x T x N x d`` patch tokens -> the same, updated."""
        frames = patches.shape[1]
        along_time = rearrange(patches, "b t n d -> b n t d")
        along_time = along_time + self.temporal_fc(
            self.temporal_attention(self.norm_temporal(along_time))
        )
        patches = rearrange(along_time, "b n t d -> b t n d")
        # Spatial attention within each frame; every frame sees the CLS token, whose updates
        # from the frames are averaged.
        per_frame = torch.cat([cls[:, None, None].expand(-1, frames, 1, -1), patches], dim=2)
        attended = self.spatial_attention(self.norm_spatial(per_frame))
        cls = cls + attended[:, :, 0].mean(dim=1)
        patches = patches + attended[:, :, 1:]
        tokens = torch.cat([cls[:, None], rearrange(patches, "b t n d -> b (t n) d")], dim=1)
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return tokens[:, 0], rearrange(tokens[:, 1:], "b (t n) d -> b t n d", t=frames)


class TimeSformer(nn.Module):
    """``B x N x 3 x H x W`` frames -> ``B x width`` clip feature (the CLS token)."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch = config.video_patch
        # B x N x 3 x H x W: one channel per colour, on axis 2.
        self.input_norm = optional_input_norm(config.input_norm, 3, dim=2)
        self.projection = nn.Linear(3 * self.patch**2, config.width)
        self.norm_input = nn.LayerNorm(config.width)
        self.cls = LearnedTokens(1, config.width)
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(config.width, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.video_depth)
        )
        self.norm = nn.LayerNorm(config.width)

    def position(self, frames: int, like: torch.Tensor) -> torch.Tensor:
        """``T x N x width`` fixed sin-cos of each patch's (frame, row, column) centre."""
        grid = self.image_size // self.patch
        centres = torch.stack(
            torch.meshgrid(
                torch.arange(frames),
                torch.arange(grid) * self.patch + self.patch // 2,
                torch.arange(grid) * self.patch + self.patch // 2,
                indexing="ij",
            ),
            dim=-1,
        )
        return sincos_3d(centres, like.shape[-1]).reshape(frames, grid * grid, -1).to(like)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        cls, _ = self.run_blocks(self.tokenize(video))
        return self.norm(cls)

    def tokenize(self, video: torch.Tensor) -> torch.Tensor:
        """``B x N x 3 x H x W`` frames -> ``B x N x patches x width`` patch tokens with their
        positions, before the blocks (VideoMAE runs them on the visible ones only)."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be B x N x 3 x H x W, got shape {tuple(video.shape)}")
        if tuple(video.shape[3:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"video frames are {video.shape[3]}x{video.shape[4]} but the model takes "
                f"{self.image_size}x{self.image_size}"
            )
        if self.input_norm is not None:
            video = self.input_norm(video)
        patches = rearrange(
            video, "b t c (gh ph) (gw pw) -> b t (gh gw) (c ph pw)", ph=self.patch, pw=self.patch
        )
        tokens = self.norm_input(self.projection(patches.to(self.projection.weight.dtype)))
        return tokens + self.position(video.shape[1], tokens)

    def run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x T x N x d`` patch tokens -> (``B x d`` CLS, ``B x T x N x d`` tokens) after the
        blocks, before the final norm; any N (a masked clip keeps the same patches per frame)."""
        cls = self.cls(tokens.shape[0])[:, 0].to(tokens.dtype)
        for block in self.blocks:
            cls, tokens = block(cls, tokens)
        return cls, tokens
