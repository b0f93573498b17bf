"""Video encoder: sparse 3D tubes plus 2D patches (TubeViT), then a ViT within each chunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import Transformer
from fedmirasol.models.config import MirasolConfig, TubeSpec
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.position import sincos_3d


@dataclass(frozen=True)
class Tube:
    """One tube type laid out on a chunk of `frames` x `size` x `size`."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    offset: tuple[int, int, int]

    def counts(self, dims: tuple[int, int, int]) -> tuple[int, int, int]:
        """Tubes along (time, height, width) on a chunk of `dims`."""
        return tuple(
            (dim - o - k) // s + 1
            for dim, k, s, o in zip(dims, self.kernel, self.stride, self.offset)
        )

    def centres(self, dims: tuple[int, int, int]) -> torch.Tensor:
        """``tokens x 3`` tube centres: index * stride + offset + kernel // 2, per axis."""
        axes = [
            torch.arange(n) * s + o + k // 2
            for n, k, s, o in zip(self.counts(dims), self.kernel, self.stride, self.offset)
        ]
        grid = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(grid, dim=-1).reshape(-1, 3)


def _scale_axis(kernel: int, stride: int, offset: int, dim: int, reference: int) -> tuple[int, int, int]:
    factor = dim / reference
    k = min(dim, max(1, round(kernel * factor)))
    s = max(1, round(stride * factor))
    o = min(dim - k, round(offset * factor))
    return k, s, o


def scale_tubes(
    tubes: tuple[TubeSpec, ...], reference: tuple[int, int], frames: int, size: int
) -> list[Tube]:
    """Rescale tubes laid out for (reference frames, reference pixels) to a chunk's geometry.

    Kernels, strides and offsets scale with the chunk; a kernel never exceeds the chunk (a
    16-frame tube becomes a 4-frame tube on a 4-frame chunk) and every tube type yields at
    least one token.
    """
    ref_frames, ref_size = reference
    scaled = []
    for kernel, stride, offset in tubes:
        per_axis = [
            _scale_axis(k, s, o, dim, ref)
            for k, s, o, dim, ref in zip(
                kernel, stride, offset, (frames, size, size), (ref_frames, ref_size, ref_size)
            )
        ]
        k, s, o = zip(*per_axis)
        scaled.append(Tube(kernel=tuple(k), stride=tuple(s), offset=tuple(o)))
    return scaled


class TubeTokenizer(nn.Module):
    """Cuts a chunk into the tubes of every type and projects each to the model width.

    Each tube type is a strided 3D convolution over the chunk cropped by its offset, computed
    as unfold + Linear so the batch axis stays first for Opacus.
    """

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.dims = (config.frames_per_chunk, config.image_size, config.image_size)
        self.tubes = scale_tubes(
            config.tubes, config.tube_reference, config.frames_per_chunk, config.image_size
        )
        self.projections = nn.ModuleList(
            nn.Linear(3 * k[0] * k[1] * k[2], config.width) for k in (t.kernel for t in self.tubes)
        )
        # Normalizing the tube embeddings puts their content on the scale of the positions.
        self.norm = nn.LayerNorm(config.width)
        centres = torch.cat([tube.centres(self.dims) for tube in self.tubes])
        self.register_buffer("centres", centres, persistent=False)  # tokens x 3 (t, y, x)
        self.register_buffer("position", sincos_3d(centres, config.width), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.position.shape[0]

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        """``B x T x F x 3 x H x W`` chunks -> ``B x T x tokens x width``."""
        x = rearrange(chunks, "b t f c h w -> b t c f h w")
        tokens = []
        for tube, projection in zip(self.tubes, self.projections):
            (kt, kh, kw), (st, sh, sw), (ot, oh, ow) = tube.kernel, tube.stride, tube.offset
            patches = (
                x[..., ot:, oh:, ow:]
                .unfold(3, kt, st)
                .unfold(4, kh, sh)
                .unfold(5, kw, sw)
            )
            patches = rearrange(patches, "b t c nt nh nw kt kh kw -> b t (nt nh nw) (c kt kh kw)")
            tokens.append(projection(patches))
        return self.norm(torch.cat(tokens, dim=2)) + self.position.to(x.dtype)


class VideoEncoder(nn.Module):
    """``B x N x 3 x H x W`` frames -> ``B x T x f x width`` tokens, T = N / frames_per_chunk."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.frames_per_chunk = config.frames_per_chunk
        self.image_size = config.image_size
        # B x N x 3 x H x W: one channel per colour, on axis 2.
        self.input_norm = optional_input_norm(config.input_norm, 3, dim=2)
        self.tokenizer = TubeTokenizer(config)
        self.transformer = Transformer(
            config.width, config.video_depth, config.heads, config.mlp_ratio, config.dropout
        )

    @property
    def tokens_per_chunk(self) -> int:
        return self.tokenizer.num_tokens

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.tokenize(video))

    def tokenize(self, video: torch.Tensor) -> torch.Tensor:
        """``B x N x 3 x H x W`` frames -> ``B x T x tokens x width`` tube tokens with their
        positions, before the transformer (VideoMAE runs it on the visible ones only)."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be B x N x 3 x H x W, got shape {tuple(video.shape)}")
        frames, height, width = video.shape[1], video.shape[3], video.shape[4]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"video frames are {height}x{width} but the model takes "
                f"{self.image_size}x{self.image_size}"
            )
        if frames % self.frames_per_chunk:
            raise ValueError(
                f"{frames} video frames do not split into chunks of {self.frames_per_chunk}"
            )
        if self.input_norm is not None:
            video = self.input_norm(video)
        chunks = rearrange(video, "b (t f) c h w -> b t f c h w", f=self.frames_per_chunk)
        return self.tokenizer(chunks)
