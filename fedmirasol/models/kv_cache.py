"""Keys and values of the text decoder's attention layers, kept across decoding steps.

Generating token t+1 needs the keys and values of tokens 0..t in every self-attention layer,
and the cross-attention's keys and values of the (fixed) audio-video latents: a cache keeps
them, so each step runs the decoder on the new token only and generation costs linear, not
quadratic, work in the answer's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionCache:
    """One attention layer's keys and values, each ``B x heads x L x d``."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.key is not None

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys and values after the earlier ones; return all of them."""
        if self.key is not None and self.value is not None:
            key = torch.cat([self.key, key], dim=-2)
            value = torch.cat([self.value, value], dim=-2)
        self.key, self.value = key, value
        return key, value

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch axis (beam search moves hypotheses between beams)."""
        if self.key is not None and self.value is not None:
            self.key, self.value = self.key[index], self.value[index]


@dataclass
class BlockCache:
    """A decoder block's self-attention cache (grows) and cross-attention cache (fixed)."""

    self_attention: AttentionCache = field(default_factory=AttentionCache)
    cross_attention: AttentionCache = field(default_factory=AttentionCache)

    def reorder(self, index: torch.Tensor) -> None:
        self.self_attention.reorder(index)
        self.cross_attention.reorder(index)


@dataclass
class DecoderCache:
    """Every block's cache, and how many token positions it holds."""

    blocks: list[BlockCache]
    length: int = 0

    @classmethod
    def empty(cls, depth: int) -> "DecoderCache":
        return cls([BlockCache() for _ in range(depth)])

    def reorder(self, index: torch.Tensor) -> None:
        for block in self.blocks:
            block.reorder(index)
