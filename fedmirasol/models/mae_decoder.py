"""The light MAE decoder: visible tokens plus mask tokens at the hidden positions -> patch values.

As in MAE / VideoMAE: the encoder's visible tokens are projected to a narrow width, one shared
learned mask token is placed at every hidden position, fixed sin-cos embeddings of every
token's centre are added, a shallow transformer runs over them all and a linear head predicts
the values of the hidden patches only. The decoder exists for pre-training; fine-tuning drops it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.attention import LearnedTokens, Transformer
from fedmirasol.models.position import sincos_2d, sincos_3d


def centre_embedding(centres: torch.Tensor, width: int) -> torch.Tensor:
    """``... x K`` centres, K = 3 (time, row, column) or 2 (time, mel) -> ``... x width``."""
    embed = {3: sincos_3d, 2: sincos_2d}.get(centres.shape[-1])
    if embed is None:
        raise ValueError(f"centres must have 2 or 3 coordinates, got {centres.shape[-1]}")
    return embed(centres.cpu(), width).to(centres.device)


class MAEDecoder(nn.Module):
    """``B x G x V x d`` visible tokens -> ``B x G x M x values`` predictions of M hidden patches,
    attention within each of the G groups."""

    def __init__(self, encoder_width: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 values_per_patch: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not divisible by {heads} heads")
        self.width = width
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = LearnedTokens(1, width)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.head = nn.Linear(width, values_per_patch)

    def forward(self, visible: torch.Tensor, visible_centres: torch.Tensor,
                hidden_centres: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (``B x G x V`` bool): False marks padding rows of `visible`, which no token
        attends to."""
        batch, groups, hidden = hidden_centres.shape[:3]
        x_visible = self.embed(visible) + centre_embedding(visible_centres, self.width).to(visible.dtype)
        mask_tokens = self.mask_token(batch)[:, None].to(x_visible.dtype)  # B x 1 x 1 x w
        x_hidden = mask_tokens + centre_embedding(hidden_centres, self.width).to(x_visible.dtype)
        x = torch.cat([x_visible, x_hidden], dim=2)  # B x G x (V + M) x w
        attend = None
        if valid is not None and not bool(valid.all()):
            keys = torch.cat([valid, valid.new_ones(batch, groups, hidden)], dim=2)
            attend = keys[:, :, None, None, :]  # B x G x 1 (heads) x 1 (queries) x keys
        out = self.transformer(x, mask=attend)
        return self.head(out[:, :, visible.shape[2]:])
