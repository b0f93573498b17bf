"""Tube masking (VideoMAE, Tong et al. 2022) and random patch masking (AudioMAE).

VideoMAE hides *tubes*: one spatial mask over the frame's patch grid, the same on every frame,
so a hidden patch cannot be copied from the same place in a neighbouring frame (video is
redundant in time; that is why a ratio as high as 0.9 still leaves a task to learn). A token
whose pixels touch a hidden cell on any frame is hidden with it: the encoder sees only tokens
made of visible pixels.

AudioMAE hides spectrogram patches at random (no tubes: a spectrogram is not redundant along
its time axis the way frames are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_count(cells: int, ratio: float) -> int:
    """Cells hidden out of `cells` at `ratio`: rounded, at least one hidden and one visible."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    if cells < 2:
        raise ValueError(f"masking needs at least 2 patches, got {cells}")
    return min(cells - 1, max(1, round(ratio * cells)))


def random_mask(shape: tuple[int, ...], ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``shape`` bool, True = hidden: along the last axis exactly `masked_count` entries of
    every row, chosen uniformly at random (`generator`: the draw; None: torch's global one)."""
    count = masked_count(shape[-1], ratio)
    noise = torch.rand(shape, generator=generator)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    return (ranks < count).to(device)


@dataclass(frozen=True)
class TubeMask:
    """One spatial mask per sample, shared by all of its frames."""

    hidden: torch.Tensor  # B x cells bool, True = hidden, the same on every frame

    @property
    def num_hidden(self) -> int:
        return int(self.hidden[0].sum())

    def per_frame(self, frames: int) -> torch.Tensor:
        """``B x frames x cells``: the same spatial mask repeated on every frame."""
        return self.hidden[:, None].expand(-1, frames, -1)

    def pixels(self, grid: tuple[int, int], cell: tuple[int, int]) -> torch.Tensor:
        """``B x (gh ch) x (gw cw)`` bool: the hidden pixels of a frame (every frame)."""
        rows = self.hidden.view(-1, *grid)
        return rows.repeat_interleave(cell[0], dim=1).repeat_interleave(cell[1], dim=2)

    def hidden_index(self) -> torch.Tensor:
        """``B x hidden`` the hidden cells of each sample, in ascending order."""
        return ordered_index(self.hidden, self.num_hidden)

    def visible_index(self) -> torch.Tensor:
        """``B x visible`` the visible cells of each sample, in ascending order."""
        return ordered_index(~self.hidden, self.hidden.shape[1] - self.num_hidden)


def tube_mask(batch: int, cells: int, ratio: float, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> TubeMask:
    """A tube mask per sample over a grid of `cells` patches, hiding `masked_count(cells,
    ratio)` of them."""
    return TubeMask(random_mask((batch, cells), ratio, generator, device))


def ordered_index(selected: torch.Tensor, count: int) -> torch.Tensor:
    """``... x count`` positions of the True entries of ``... x n`` `selected` (each row holds
    exactly `count`), ascending."""
    return torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)[..., :count]


def covered_cells(boxes: torch.Tensor, grid: tuple[int, int], cell: tuple[int, int]
                  ) -> torch.Tensor:
    """``tokens x cells`` bool: which cells of a `grid` of `cell`-pixel cells each token's
    pixels touch; `boxes` is ``tokens x 4`` (row start, row end, column start, column end),
    ends exclusive. Pixels beyond the grid belong to no cell."""
    rows = torch.arange(grid[0]) * cell[0]
    cols = torch.arange(grid[1]) * cell[1]
    touches_row = (boxes[:, None, 0] < rows[None] + cell[0]) & (boxes[:, None, 1] > rows[None])
    touches_col = (boxes[:, None, 2] < cols[None] + cell[1]) & (boxes[:, None, 3] > cols[None])
    return (touches_row[:, :, None] & touches_col[:, None, :]).reshape(len(boxes), -1)


def visible_tokens(hidden: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """``B x tokens`` bool: a token is visible when none of the cells it covers is hidden
    (`hidden` ``B x cells``, `footprint` ``tokens x cells``)."""
    return ~(hidden.float() @ footprint.float().T).bool()


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``B x ... x n x d`` tokens at ``B x k`` (or ``B x ... x k``) `index` -> ``B x ... x k x d``."""
    while index.ndim < tokens.ndim - 1:  # the same index for every middle axis (chunks)
        index = index[:, None]
    index = index.expand(*tokens.shape[:-2], index.shape[-1])
    return torch.gather(tokens, -2, index[..., None].expand(*index.shape, tokens.shape[-1]))


def padded_selection(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``B x k`` index, ``B x k`` valid) of the True entries of ``B x n`` `selected`, k the
    largest count in the batch; a row with fewer is padded with index 0, valid False."""
    counts = selected.sum(dim=1)
    width = int(counts.max())
    index = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=selected.device)[None] < counts[:, None]
    return index, valid
