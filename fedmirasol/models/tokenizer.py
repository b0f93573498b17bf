"""A byte-level tokenizer: UTF-8 bytes plus three special ids, nothing to download."""

from __future__ import annotations

from typing import Sequence

import torch


class ByteTokenizer:
    """Tokens 0..255 are bytes; PAD, BOS and EOS follow them."""

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str, max_len: int) -> torch.Tensor:
        """BOS + UTF-8 bytes + EOS, cut to `max_len` (EOS kept) and padded with PAD."""
        if max_len < 2:
            raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}")
        body = list(text.encode("utf-8"))[: max_len - 2]
        ids = [self.bos_id, *body, self.eos_id]
        ids += [self.pad_id] * (max_len - len(ids))
        return torch.tensor(ids, dtype=torch.long)

    def empty(self, max_len: int) -> torch.Tensor:
        """The token row of a sample without a caption: PAD only, so no text loss is taken."""
        return torch.full((max_len,), self.pad_id, dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Bytes up to the first EOS, special ids dropped, invalid UTF-8 replaced."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = bytearray()
        for token in ids:
            if token == self.eos_id:
                break
            if token < 256:
                out.append(token)
        return out.decode("utf-8", errors="replace")
