"""The time-aligned autoregressive model over the chunks' combined latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import LearnedTokens, Transformer
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.position import sincos_1d


def block_causal_mask(chunks: int, tokens_per_chunk: int, device: torch.device | None = None) -> torch.Tensor:
    """``(T*m) x (T*m)`` bool mask: a token of chunk t attends to every token of chunks <= t."""
    chunk_of = torch.arange(chunks, device=device).repeat_interleave(tokens_per_chunk)
    return chunk_of[:, None] >= chunk_of[None, :]


class TimeAlignedAutoregressive(nn.Module):
    """Block-causal transformer over x_1..x_T, with the latent prediction loss.

    h_t (the outputs at chunk t) sees only chunks <= t; a linear head predicts the next
    chunk's combined tokens x_{t+1} from h_t against a stop-gradient target.
    """

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.width = config.width
        self.slot_embedding = LearnedTokens(config.latents_per_chunk, config.width)
        self.transformer = Transformer(
            config.width, config.ar_depth, config.heads, config.mlp_ratio, config.dropout
        )
        self.predictor = nn.Linear(config.width, config.width)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``B x T x m x d`` -> (``B x (T*m) x d`` outputs, latent loss or None when T == 1)."""
        batch, chunks, slots, _ = latents.shape
        chunk_position = sincos_1d(torch.arange(chunks), self.width).to(latents)
        x = latents + chunk_position[None, :, None] + self.slot_embedding(batch)[:, None]
        mask = block_causal_mask(chunks, slots, latents.device)
        outputs = self.transformer(rearrange(x, "b t m d -> b (t m) d"), mask=mask)
        if chunks < 2:
            return outputs, None
        per_chunk = rearrange(outputs, "b (t m) d -> b t m d", t=chunks)
        prediction = self.predictor(per_chunk[:, :-1])
        # Stop-gradient target, normalized so shrinking the latents cannot shrink the loss.
        target = F.layer_norm(latents[:, 1:].detach(), (self.width,))
        per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
        return outputs, per_sample
