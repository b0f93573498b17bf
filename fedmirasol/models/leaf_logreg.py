"""LEAF's logistic regression for its synthetic data (``models/synthetic/log_reg.py``; FedProx's
``mclr``): one dense layer from the features to the class logits, softmax cross-entropy.

LEAF's version squashes the logits with a sigmoid before the softmax; FedProx's, which the
Synthetic(alpha, beta) results come from, does not, and neither does this one.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.leaf_common import LeafOutput, check_input


class LeafLogReg(nn.Module):
    """Multinomial logistic regression; reads ``batch["features"]`` (``B x leaf_input_dim``)."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = optional_input_norm(config.input_norm, config.leaf_input_dim, dim=1)
        self.classifier = nn.Linear(config.leaf_input_dim, config.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> LeafOutput:
        features = check_input(batch, "features", (self.config.leaf_input_dim,), "leaf-logreg")
        if self.input_norm is not None:
            features = self.input_norm(features)
        return LeafOutput(self.classifier(features), features[:, None], None)
