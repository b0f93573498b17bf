r"""Masked encoder passes for masked autoencoding: the encoder runs on the visible tokens only.

    Mirasol video   tube tokens of each chunk -> tube mask over the 2D-patch grid (the same on
                    every frame of every chunk) -> visible tokens -> the chunk's ViT
    TimeSformer     patch tokens of each frame -> tube mask over the patch grid -> visible
                    patches of every frame -> divided space-time blocks
    Mirasol audio   log-mel patches of each chunk -> random mask (AudioMAE) -> visible patches
                    -> the chunk's ViT

Mirasol's sparse tubes: the tube mask is drawn over the grid of the 2D patches (the tube type
with a one-frame kernel); a sparse 3D tube is visible only when every cell its pixels touch is
visible, so no visible token carries a hidden pixel. The reconstruction target of a hidden cell
is its pixels over all frames of the chunk (``frames x ph x pw x 3``): what VideoMAE's tubes
cover. Samples then differ in how many sparse tubes stay visible; the encoder pads them to the
batch's largest count and masks the padding out of attention.

Pixel targets are normalized per patch and colour channel (VideoMAE's normalized pixels) or,
with `normalize` off, the pixels as the encoder reads them; log-mel patches are already on a
fixed scale (`audio_encoder.LOG_MEL_*`) and are reconstructed as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from fedmirasol.models.audio_encoder import AudioEncoder
from fedmirasol.models.timesformer import TimeSformer
from fedmirasol.models.tube_mask import (
    covered_cells,
    gather_tokens,
    ordered_index,
    padded_selection,
    random_mask,
    tube_mask,
    visible_tokens,
)
from fedmirasol.models.video_encoder import Tube, TubeTokenizer, VideoEncoder


@dataclass
class MaskedEncoding:
    """What a masked encoder pass hands the MAE decoder; G groups are decoded apart (a
    chunk each for Mirasol, one for the whole clip for TimeSformer)."""

    encoded: torch.Tensor  # B x G x V x d  visible tokens after the encoder
    visible_centres: torch.Tensor  # B x G x V x K  their centres: (t, row, col) or (t, mel)
    valid: torch.Tensor | None  # B x G x V  False where a row is padding (None: none is)
    hidden_centres: torch.Tensor  # B x G x M x K  centres of the hidden patches
    targets: torch.Tensor  # B x G x M x P  their values to reconstruct


def pixel_targets(patches: torch.Tensor, normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """``... x (n c)`` patch pixels (c = 3 colours) -> the reconstruction targets: with
    `normalize`, each patch's values per colour to zero mean and unit (unbiased) variance over
    its n positions (VideoMAE's normalized pixels); else the pixels as the model reads them."""
    if not normalize:
        return patches.float()
    values = patches.float().unflatten(-1, (-1, 3))
    mean = values.mean(dim=-2, keepdim=True)
    std = values.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return rearrange((values - mean) / (std + eps), "... n c -> ... (n c)")


# ---- Mirasol's video encoder


def patch_tube(tokenizer: TubeTokenizer) -> int:
    """The index of the 2D-patch tube type (one-frame kernel) whose grid the mask is drawn on."""
    for index, tube in enumerate(tokenizer.tubes):
        (kt, kh, kw), (_, sh, sw), (_, oh, ow) = tube.kernel, tube.stride, tube.offset
        if kt == 1 and (sh, sw) == (kh, kw) and (oh, ow) == (0, 0):
            return index
    raise ValueError("VideoMAE on Mirasol draws its tube mask over the 2D patches: a tube type "
                     "with a one-frame kernel that tiles the frame (stride = kernel, no spatial "
                     f"offset); this model's tubes are {[t.kernel for t in tokenizer.tubes]}")


def _boxes(tube: Tube, dims: tuple[int, int, int]) -> torch.Tensor:
    """``tokens x 4`` (row start, row end, column start, column end) of each tube's pixels,
    in the tokenizer's token order (time, row, column)."""
    counts = tube.counts(dims)
    (_, kh, kw), (_, sh, sw), (_, oh, ow) = tube.kernel, tube.stride, tube.offset
    t, r, c = torch.meshgrid(*(torch.arange(n) for n in counts), indexing="ij")
    rows, cols = (r * sh + oh).reshape(-1), (c * sw + ow).reshape(-1)
    return torch.stack([rows, rows + kh, cols, cols + kw], dim=-1)


class MirasolVideoMasking(nn.Module):
    """Tube-masked pass of Mirasol's `VideoEncoder` (no parameters of its own)."""

    def __init__(self, encoder: VideoEncoder) -> None:
        super().__init__()
        tokenizer = encoder.tokenizer
        frames, size, _ = tokenizer.dims
        patch = tokenizer.tubes[patch_tube(tokenizer)]
        self.cell = patch.kernel[1:]
        self.grid = (size // self.cell[0], size // self.cell[1])
        self.frames = frames
        footprint = covered_cells(torch.cat([_boxes(t, tokenizer.dims) for t in tokenizer.tubes]),
                                  self.grid, self.cell)
        self.register_buffer("footprint", footprint, persistent=False)  # tokens x cells
        rows, cols = torch.meshgrid(torch.arange(self.grid[0]), torch.arange(self.grid[1]),
                                    indexing="ij")
        cell_centres = torch.stack([torch.full_like(rows, frames // 2),
                                    rows * self.cell[0] + self.cell[0] // 2,
                                    cols * self.cell[1] + self.cell[1] // 2], dim=-1)
        self.register_buffer("cell_centres", cell_centres.reshape(-1, 3), persistent=False)

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def values_per_patch(self) -> int:
        """A hidden cell's target: its pixels on every frame of the chunk, 3 colours."""
        return self.frames * self.cell[0] * self.cell[1] * 3

    def forward(self, encoder: VideoEncoder, video: torch.Tensor, ratio: float,
                generator: torch.Generator | None = None, normalize: bool = True
                ) -> MaskedEncoding:
        """``B x N x 3 x H x W`` -> the visible tokens of every chunk encoded, and the hidden
        cells' targets."""
        tokens = encoder.tokenize(video)  # B x T x L x d
        batch, chunks = tokens.shape[:2]
        mask = tube_mask(batch, self.cells, ratio, generator, video.device)
        visible = visible_tokens(mask.hidden, self.footprint)  # B x L
        index, valid = padded_selection(visible)  # B x V
        attend = None if bool(valid.all()) else valid[:, None, None, None, :]  # keys only
        encoded = encoder.transformer(gather_tokens(tokens, index), mask=attend)  # B x T x V x d
        hidden = mask.hidden_index()  # B x M
        gh, gw = self.grid
        (ph, pw), (height, width) = self.cell, (gh * self.cell[0], gw * self.cell[1])
        cells = rearrange(video[..., :height, :width],
                          "b (t f) c (gh ph) (gw pw) -> b t (gh gw) (f ph pw c)",
                          f=self.frames, ph=ph, pw=pw)
        targets = pixel_targets(gather_tokens(cells, hidden), normalize)
        return MaskedEncoding(
            encoded=encoded,
            visible_centres=self.expand(encoder.tokenizer.centres[index], chunks),
            valid=valid[:, None].expand(-1, chunks, -1),
            hidden_centres=self.expand(self.cell_centres[hidden], chunks),
            targets=targets,
        )

    @staticmethod
    def expand(per_sample: torch.Tensor, chunks: int) -> torch.Tensor:
        """``B x n x K`` -> ``B x T x n x K``: the same for every chunk (tube masking)."""
        return per_sample[:, None].expand(-1, chunks, -1, -1)


# ---- TimeSformer (the late-fusion baseline's video encoder)


class TimeSformerMasking(nn.Module):
    """Tube-masked pass of `TimeSformer`: the same patches hidden on every frame."""

    def __init__(self, encoder: TimeSformer) -> None:
        super().__init__()
        self.patch = encoder.patch
        self.grid = encoder.image_size // encoder.patch

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    @property
    def values_per_patch(self) -> int:
        return 3 * self.patch * self.patch

    def centres(self, frames: int, cells: torch.Tensor) -> torch.Tensor:
        """``B x k`` cell indices -> ``B x (frames k) x 3`` (frame, row, column) centres."""
        half = self.patch // 2
        rows, cols = cells // self.grid * self.patch + half, cells % self.grid * self.patch + half
        space = torch.stack([rows, cols], dim=-1)[:, None].expand(-1, frames, -1, -1)  # B x T x k x 2
        time = torch.arange(frames, device=cells.device)[None, :, None, None]
        centres = torch.cat([time.expand(*space.shape[:3], 1), space], dim=-1)  # B x T x k x 3
        return rearrange(centres, "b t k c -> b (t k) c")

    def forward(self, encoder: TimeSformer, video: torch.Tensor, ratio: float,
                generator: torch.Generator | None = None, normalize: bool = True
                ) -> MaskedEncoding:
        tokens = encoder.tokenize(video)  # B x T x N x d
        batch, frames = tokens.shape[:2]
        mask = tube_mask(batch, self.cells, ratio, generator, video.device)
        visible, hidden = mask.visible_index(), mask.hidden_index()  # B x V, B x M
        _, encoded = encoder.run_blocks(gather_tokens(tokens, visible))  # B x T x V x d
        patches = rearrange(video, "b t c (gh ph) (gw pw) -> b t (gh gw) (ph pw c)",
                            ph=self.patch, pw=self.patch)
        targets = pixel_targets(gather_tokens(patches, hidden), normalize)
        return MaskedEncoding(
            encoded=rearrange(encoder.norm(encoded), "b t v d -> b 1 (t v) d"),
            visible_centres=self.centres(frames, visible)[:, None],
            valid=None,
            hidden_centres=self.centres(frames, hidden)[:, None],
            targets=rearrange(targets, "b t m p -> b 1 (t m) p"),
        )


# ---- Mirasol's audio encoder (AudioMAE-style)


class MirasolAudioMasking(nn.Module):
    """Randomly masked pass of Mirasol's `AudioEncoder`: each chunk hides the same number of
    its log-mel patches, chosen independently."""

    def __init__(self, encoder: AudioEncoder) -> None:
        super().__init__()
        self.values_per_patch = encoder.patch[0] * encoder.patch[1]
        self.cells = encoder.tokens_per_chunk

    def forward(self, encoder: AudioEncoder, audio: torch.Tensor, chunks: int, ratio: float,
                generator: torch.Generator | None = None) -> MaskedEncoding:
        patches = encoder.patches(audio, chunks)  # B x T x S x P
        tokens = encoder.embed(patches)  # B x T x S x d
        hidden_mask = random_mask(tuple(patches.shape[:3]), ratio, generator, audio.device)
        count = int(hidden_mask[0, 0].sum())
        visible = ordered_index(~hidden_mask, hidden_mask.shape[-1] - count)  # B x T x V
        hidden = ordered_index(hidden_mask, count)  # B x T x M
        return MaskedEncoding(
            encoded=encoder.transformer(gather_tokens(tokens, visible)),
            visible_centres=encoder.centres[visible],
            valid=None,
            hidden_centres=encoder.centres[hidden],
            targets=gather_tokens(patches, hidden).float(),
        )
