"""The contextual text decoder: causal self-attention plus cross-attention to the AR outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmirasol.models.attention import Transformer
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.position import sincos_1d
from fedmirasol.models.tokenizer import ByteTokenizer


class TextDecoder(nn.Module):
    """Next-token prediction over byte tokens, conditioned on the audio-video latents."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer()
        self.max_len = config.max_text_len
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

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``B x L`` tokens and ``B x C x d`` context -> ``B x L x vocab`` next-token logits."""
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens exceeds max_text_len {self.max_len}")
        x = self.embedding(tokens) + self.position[:length].to(context.dtype)
        return self.head(self.transformer(x, context=context, causal=True))

    def loss_per_sample(
        self, tokens: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy of each sample over its non-PAD targets.

        Returns (losses ``B``, has_text ``B`` bool); a sample without text has loss 0.
        Columns that are PAD in every row are dropped first: they carry no target.
        """
        used_columns = (tokens != self.tokenizer.pad_id).any(dim=0).nonzero()
        length = int(used_columns.max()) + 1 if len(used_columns) else 2
        tokens = tokens[:, : max(length, 2)]
        logits = self.forward(tokens[:, :-1], context)
        targets = tokens[:, 1:]
        valid = targets != self.tokenizer.pad_id
        token_loss = F.cross_entropy(
            logits.transpose(1, 2).float(), targets, reduction="none"
        ) * valid
        counts = valid.sum(dim=1)
        return token_loss.sum(dim=1) / counts.clamp(min=1), counts > 0

    @torch.no_grad()
    def generate(
        self,
        context: torch.Tensor,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Decode a caption per sample: greedy at temperature 0, else sampled (optionally top-k)."""
        batch = context.shape[0]
        limit = min(max_new_tokens or self.max_len - 1, self.max_len - 1)
        tokens = torch.full((batch, 1), self.tokenizer.bos_id, dtype=torch.long, device=context.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=context.device)
        for _ in range(limit):
            logits = self.forward(tokens, context)[:, -1].float()
            logits[:, self.tokenizer.pad_id] = float("-inf")
            logits[:, self.tokenizer.bos_id] = float("-inf")
            if temperature <= 0:
                next_token = logits.argmax(dim=-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            next_token = torch.where(finished, self.tokenizer.eos_id, next_token)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == self.tokenizer.eos_id
            if finished.all():
                break
        return [self.tokenizer.decode(row[1:]) for row in tokens]
