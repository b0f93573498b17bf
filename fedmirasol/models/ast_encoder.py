"""AST, the Audio Spectrogram Transformer (Gong et al., Interspeech 2021).

The clip's log-mel spectrogram, oriented (time, frequency) as AST's reference code documents
for its input, is cut into overlapping patches (16x16 with stride 10 in the paper), projected,
prefixed with a CLS and a distillation token and run through a ViT; the clip's feature is the
mean of those two tokens' outputs.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import LearnedTokens, Transformer
from fedmirasol.models.audio_encoder import LogMel
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.position import patch_centres, sincos_2d


class AudioSpectrogramTransformer(nn.Module):
    """``B x M`` waveform -> ``B x width`` clip feature."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.patch = config.audio_patch  # (spectrogram frames, mel bins)
        self.stride = config.audio_stride
        if self.patch[1] > config.n_mels:
            raise ValueError(f"a patch of {self.patch[1]} mel bins exceeds n_mels {config.n_mels}")
        self.log_mel = LogMel(config.sample_rate, config.n_mels)
        # B x time x n_mels: one channel per mel bin, on the last axis.
        self.input_norm = optional_input_norm(config.input_norm, config.n_mels, dim=-1)
        self.projection = nn.Linear(self.patch[0] * self.patch[1], config.width)
        self.norm_input = nn.LayerNorm(config.width)
        self.tokens = LearnedTokens(2, config.width)  # CLS, distillation
        self.transformer = Transformer(
            config.width, config.audio_depth, config.heads, config.mlp_ratio, config.dropout
        )

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``B x M`` waveform -> ``B x time x frequency`` normalized log-mel (AST's input)."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be B x samples, got shape {tuple(audio.shape)}")
        spectrogram = self.log_mel(audio)
        return spectrogram if self.input_norm is None else self.input_norm(spectrogram)

    def patch_grid(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """``B x time x frequency`` -> ``B x grid_time x grid_frequency x (pt pf)`` patches.

        Patches overlap where the stride is below the patch size; a partial patch at the end of
        an axis is dropped.
        """
        (pt, pf), (st, sf) = self.patch, self.stride
        if spectrogram.shape[1] < pt:
            raise ValueError(f"{spectrogram.shape[1]} spectrogram frames are fewer than a patch's {pt}")
        grid = spectrogram.unfold(1, pt, st).unfold(2, pf, sf)
        return rearrange(grid, "b gt gf pt pf -> b gt gf (pt pf)")

    def position(self, grid_time: int, grid_frequency: int, like: torch.Tensor) -> torch.Tensor:
        """``(gt gf) x width`` fixed sin-cos of each patch's (time, frequency) centre."""
        (pt, pf), (st, sf) = self.patch, self.stride
        centres = patch_centres((grid_time, grid_frequency), (pt, pf), (st, sf))
        return sincos_2d(centres, like.shape[-1]).to(like)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        grid = self.patch_grid(self.spectrogram(audio))
        patches = rearrange(grid, "b gt gf p -> b (gt gf) p").to(self.projection.weight.dtype)
        tokens = self.norm_input(self.projection(patches))
        tokens = tokens + self.position(grid.shape[1], grid.shape[2], tokens)
        tokens = torch.cat([self.tokens(audio.shape[0]).to(tokens.dtype), tokens], dim=1)
        out = self.transformer(tokens)
        return (out[:, 0] + out[:, 1]) / 2
