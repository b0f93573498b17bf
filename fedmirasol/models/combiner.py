"""Combiners: fuse each chunk's video and audio tokens into m compact latent tokens."""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.attention import LearnedTokens, Transformer
from fedmirasol.models.config import MirasolConfig


class TransformerCombiner(nn.Module):
    """Run a transformer over [v_t; a_t; m learned queries] and keep the last m outputs."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.latents = config.latents_per_chunk
        self.queries = LearnedTokens(config.latents_per_chunk, config.width)
        self.transformer = Transformer(
            config.width, config.combiner_depth, config.heads, config.mlp_ratio, config.dropout
        )

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``B x T x f x d`` and ``B x T x s x d`` -> ``B x T x m x d``."""
        batch, chunks = video.shape[:2]
        queries = self.queries(batch).unsqueeze(1).expand(-1, chunks, -1, -1)
        fused = self.transformer(torch.cat([video, audio, queries], dim=2))
        return fused[:, :, -self.latents :]


class TokenLearner(nn.Module):
    """Learn `outputs` soft selections over the input tokens (Ryoo et al., 2021)."""

    def __init__(self, width: int, outputs: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.norm = nn.LayerNorm(width)
        self.scores = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, outputs))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B x L x d`` -> ``B x outputs x d``: each output is a softmax-weighted token sum."""
        weights = self.scores(self.norm(tokens)).softmax(dim=1)
        return torch.einsum("bln,bld->bnd", weights, tokens)


class TokenTuringMachineCombiner(nn.Module):
    """Token Turing Machine (Ryoo et al., 2023) as Mirasol's combiner.

    A memory of k tokens is carried from chunk to chunk. For chunk t:
    read: m tokens = TokenLearner([memory; v_t; a_t]); process: transformer over them, whose
    outputs are x_t; write: memory = TokenLearner([memory; v_t; a_t; x_t]).
    """

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.initial_memory = LearnedTokens(config.ttm_memory, config.width)
        # Role embeddings tell memory, video, audio and processed tokens apart.
        self.roles = LearnedTokens(4, config.width)
        self.read = TokenLearner(config.width, config.latents_per_chunk)
        self.process = Transformer(
            config.width, config.combiner_depth, config.heads, config.mlp_ratio, config.dropout
        )
        self.write = TokenLearner(config.width, config.ttm_memory)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``B x T x f x d`` and ``B x T x s x d`` -> ``B x T x m x d``, chunk by chunk."""
        batch, chunks = video.shape[:2]
        memory_role, video_role, audio_role, output_role = self.roles(batch).unbind(dim=1)
        memory = self.initial_memory(batch)
        outputs = []
        for t in range(chunks):
            inputs = torch.cat(
                [video[:, t] + video_role[:, None], audio[:, t] + audio_role[:, None]], dim=1
            )
            tagged_memory = memory + memory_role[:, None]
            processed = self.process(self.read(torch.cat([tagged_memory, inputs], dim=1)))
            outputs.append(processed)
            if t + 1 < chunks:
                # No write after the last chunk: nothing reads that memory, and a module call
                # without a backward pass would misalign Opacus' per-sample gradients.
                memory = self.write(
                    torch.cat([tagged_memory, inputs, processed + output_role[:, None]], dim=1)
                )
        return torch.stack(outputs, dim=1)


def build_combiner(config: MirasolConfig) -> nn.Module:
    """The combiner named by `config.combiner`."""
    if config.combiner == "ttm":
        return TokenTuringMachineCombiner(config)
    return TransformerCombiner(config)
