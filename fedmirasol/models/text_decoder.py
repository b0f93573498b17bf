"""The contextual text decoder: causal self-attention plus cross-attention to the AR outputs.

A sample's text is ``BOS prompt answer EOS``: the prompt (a question, or "caption:") is read,
never predicted (`prompt_length` tokens are masked out of the loss), and `generate` continues
each sample's prompt (`fedmirasol.models.generation`).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedmirasol.models.attention import Transformer
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.kv_cache import DecoderCache
from fedmirasol.models.position import sincos_1d
from fedmirasol.models.tokenizer import ByteTokenizer


class TextDecoder(nn.Module):
    """Next-token prediction over byte tokens, conditioned on the audio-video latents."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer()
        self.max_len = config.max_text_len
        self.depth = config.text_depth
        self.embedding = nn.Embedding(self.tokenizer.vocab_size, config.width)
        self.register_buffer(
            "position",
            sincos_1d(torch.arange(config.max_text_len), config.width),
            persistent=False,
        )
        self.transformer = Transformer(
            config.width, config.text_depth, config.heads, config.mlp_ratio, config.dropout,
            cross=True,
        )
        self.head = nn.Linear(config.width, self.tokenizer.vocab_size)

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """``B x L`` tokens and ``B x C x d`` context -> ``B x L x vocab`` next-token logits.

        Training passes tokens only (positions 0..L-1, causal). Generation passes each token's
        `positions` (``B x L``, a left-padded prompt starts later), a boolean attention `mask`
        (``B x 1 x L x K``, K keys: the cached ones and these) and the `cache` it extends.
        """
        length = tokens.shape[1]
        if positions is None:
            if length > self.max_len:
                raise ValueError(f"text of {length} tokens exceeds max_text_len {self.max_len}")
            positions = torch.arange(length, device=tokens.device)
        elif int(positions.max()) >= self.max_len:
            raise ValueError(f"text position {int(positions.max())} exceeds max_text_len {self.max_len}")
        x = self.embedding(tokens) + self.position[positions].to(context.dtype)
        causal = mask is None
        hidden = self.transformer(x, context=context, mask=mask, causal=causal,
                                  cache=cache.blocks if cache is not None else None)
        if cache is not None:
            cache.length += length
        return self.head(hidden)

    def loss_per_sample(
        self, tokens: torch.Tensor, context: torch.Tensor, prompt_length: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy of each sample over its non-PAD, non-prompt targets.

        `prompt_length` (``B``): the leading tokens of each row (BOS included) that are its
        prompt; the decoder reads them but is not trained to predict them.
        Returns (losses ``B``, has_text ``B`` bool); a sample without targets has loss 0.
        Columns that are PAD in every row are dropped first: they carry no target.
        """
        used_columns = (tokens != self.tokenizer.pad_id).any(dim=0).nonzero()
        length = int(used_columns.max()) + 1 if len(used_columns) else 2
        tokens = tokens[:, : max(length, 2)]
        logits = self.forward(tokens[:, :-1], context)
        targets = tokens[:, 1:]
        valid = targets != self.tokenizer.pad_id
        if prompt_length is not None:  # target j is token j + 1: a prompt token while j + 1 < P
            target_index = torch.arange(1, tokens.shape[1], device=tokens.device)
            valid = valid & (target_index[None, :] >= prompt_length[:, None])
        token_loss = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, reduction="none"
        ) * valid
        counts = valid.sum(dim=1)
        return token_loss.sum(dim=1) / counts.clamp(min=1), counts > 0

    def batch_loss(self, batch: Mapping[str, torch.Tensor], context: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_per_sample` of a batch's ``text``, its prompts (``prompt_length``) masked."""
        return self.loss_per_sample(batch["text"], context, batch.get("prompt_length"))

    @torch.no_grad()
    def generate(
        self,
        context: torch.Tensor,
        prompts: torch.Tensor | None = None,
        prompt_length: torch.Tensor | None = None,
        **options,
    ) -> list[str]:
        """Continue each sample's prompt (`prompts` rows as in a batch's ``text``, the first
        `prompt_length` tokens of each; none: BOS only) and return the generated text.

        Options (`fedmirasol.models.generation.generate`): ``max_new_tokens``,
        ``temperature`` (0: greedy), ``top_k``, ``num_beams``, ``length_penalty``,
        ``generator``, ``use_cache``."""
        from fedmirasol.models.generation import generate

        return generate(self, context, prompts, prompt_length, **options)
