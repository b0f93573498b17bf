"""The local optimizer every training party builds the same way (a client, or the server
training FLTrust's reference update on its root data)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


def local_optimizer(model: nn.Module, client: Mapping[str, Any],
                    lr: float | None = None) -> torch.optim.Optimizer:
    """`client.optimizer` over `model`'s trainable parameters (lr: None = client.lr)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = client.lr if lr is None else lr
    if client.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=client.momentum,
                               weight_decay=client.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=client.weight_decay)
