"""LEAF's reference stacked LSTMs (TalwalkarLab/leaf, ``models/shakespeare/stacked_lstm.py``,
``models/sent140/stacked_lstm.py``).

Shakespeare: 80 character ids -> embedding 8 -> 2-layer LSTM 256 -> the last step's output ->
dense over LEAF's 80 characters (the next one). Sent140: 25 word ids -> embedding 100 -> 2-layer
LSTM 100 -> dense 128 -> dense 2. The embedding table has `config.leaf_vocab` rows (the data
layer's token ids: 80 characters + 'unknown'; or hashed words + padding).

The LSTM is Opacus' `DPLSTM`: the same equations and parameter names as `nn.LSTM`, built from
Linear layers whose per-sample gradients Opacus and PyTorch's expanded weights can compute
(cuDNN's fused `nn.LSTM` admits neither), so DP-SGD trains it unchanged.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn

from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.leaf_common import LeafOutput, check_input

# task -> (sequence length, embedding width, LSTM width, dense width before the classifier)
LSTM_SHAPES = {"shakespeare": (80, 8, 256, 0), "sent140": (25, 100, 100, 128)}


class LeafLSTM(nn.Module):
    """LEAF's stacked LSTM for `config.leaf_task`; reads ``batch["tokens"]`` (``B x L`` ids)."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.config = config
        self.seq_len, embed, hidden, dense = LSTM_SHAPES[config.leaf_task]
        self.embedding = nn.Embedding(config.leaf_vocab, embed)
        self.input_norm = optional_input_norm(config.input_norm, embed, dim=2)
        self.lstm = DPLSTM(embed, hidden, num_layers=2, batch_first=True)
        self.dense = nn.Linear(hidden, dense) if dense else None
        self.classifier = nn.Linear(dense or hidden, config.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> LeafOutput:
        tokens = check_input(batch, "tokens", (self.seq_len,), "leaf-lstm")
        x = self.embedding(tokens)
        if self.input_norm is not None:
            x = self.input_norm(x)
        outputs, _ = self.lstm(x)
        last = outputs[:, -1]
        features = self.dense(last) if self.dense is not None else last
        return LeafOutput(self.classifier(features), features[:, None], None)
