"""Transformer blocks from Linear layers and scaled_dot_product_attention.

Every block takes tensors shaped ``B x ... x L x D``: any axes between the batch and the
sequence (chunks, for instance) are kept as they are, so attention runs within each of them
and the batch axis stays first, as Opacus' per-sample gradients need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fedmirasol.models.kv_cache import AttentionCache, BlockCache


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """`mask` is boolean, True where a query may attend to a key (broadcast over heads);
        `causal` masks future positions with the fast fused kernel instead. With a `cache`,
        self-attention appends this call's keys and values to the cached ones and attends to
        all of them; cross-attention computes the context's once and reuses them."""
        cross = context is not None
        context = x if context is None else context
        q = rearrange(self.query(x), "... l (h d) -> ... h l d", h=self.heads)
        if cross and cache is not None and cache.filled:
            k, v = cache.key, cache.value  # the same context at every decoding step
        else:
            k, v = rearrange(self.key_value(context), "... l (two h d) -> two ... h l d", two=2, h=self.heads)
            if cache is not None:
                k, v = cache.append(k, v)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
        return self.out(rearrange(attended, "... h l d -> ... l (h d)"))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, mlp_ratio: float, dropout: float = 0.0) -> None:
        hidden = int(width * mlp_ratio)
        super().__init__(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )


class Block(nn.Module):
    """Pre-norm transformer block, with optional cross-attention to a context."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0, cross: bool = False
    ) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attention = Attention(width, heads, dropout)
        self.norm_cross = nn.LayerNorm(width) if cross else None
        self.cross_attention = Attention(width, heads, dropout) if cross else None
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = FeedForward(width, mlp_ratio, dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: BlockCache | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attention(self.norm_self(x), mask=mask, causal=causal,
                                    cache=cache.self_attention if cache else None)
        if self.cross_attention is not None:
            if context is None:
                raise ValueError("this block cross-attends and needs a context")
            x = x + self.cross_attention(self.norm_cross(x), context=context, mask=context_mask,
                                         cache=cache.cross_attention if cache else None)
        return x + self.mlp(self.norm_mlp(x))


class Transformer(nn.Module):
    """A stack of blocks followed by a final LayerNorm."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, dropout, cross) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: list[BlockCache] | None = None,
    ) -> torch.Tensor:
        """`cache`: one `BlockCache` per block (incremental decoding)."""
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, context=context, context_mask=context_mask, causal=causal,
                      cache=cache[i] if cache is not None else None)
        return self.norm(x)


class LearnedTokens(nn.Module):
    """`count` learned vectors, stored as an nn.Embedding so Opacus has a grad sampler for them."""

    def __init__(self, count: int, width: int) -> None:
        super().__init__()
        self.count = count
        self.embedding = nn.Embedding(count, width)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """``batch_size x count x width``."""
        index = torch.arange(self.count, device=device or self.embedding.weight.device)
        return self.embedding(index.expand(batch_size, self.count))
