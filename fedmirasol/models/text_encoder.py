"""The caption encoder of video-text contrastive training: byte tokens -> one text feature.

The same byte tokenizer as the text decoder (`ByteTokenizer`), a bidirectional transformer over
the caption's non-PAD tokens, and the mean of their outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.attention import Transformer
from fedmirasol.models.position import sincos_1d
from fedmirasol.models.tokenizer import ByteTokenizer


class TextEncoder(nn.Module):
    """``B x L`` caption tokens -> ``B x width``; a row of PAD only (no caption) gives the
    embedding of nothing (no NaN), which callers leave out."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, max_len: int) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer()
        self.max_len = max_len
        self.embedding = nn.Embedding(self.tokenizer.vocab_size, width)
        self.register_buffer("position", sincos_1d(torch.arange(max_len), width), persistent=False)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"text of {tokens.shape[1]} tokens exceeds max_text_len {self.max_len}")
        present = tokens != self.tokenizer.pad_id  # B x L
        used = int(present.any(dim=0).nonzero().max()) + 1 if bool(present.any()) else 1
        tokens, present = tokens[:, :used], present[:, :used]  # columns PAD in every row dropped
        keys = present | ~present.any(dim=1, keepdim=True)  # an empty row attends to its PADs
        x = self.embedding(tokens) + self.position[:used].to(self.embedding.weight.dtype)
        x = self.transformer(x, mask=keys[:, None, None, :])  # B x heads x queries x keys
        weights = keys.to(x.dtype)[..., None]
        return (x * weights).sum(dim=1) / weights.sum(dim=1)
