"""Reptile (Nichol et al., 2018) as a federated client: k steps of plain SGD at the inner
learning rate from the received model w, then the model moves to w + meta_lr (w_k - w).

The server averages these moves, so the global model steps towards the points each client's
data adapts to in a few SGD steps (Jiang et al., 2019: FedAvg is Reptile with meta_lr = 1);
clients are evaluated after `adapt-steps` of local adaptation.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.personalization.trainable import TrainOnData, full_state
from fedmirasol.core.parameters import canonical_name
from fedmirasol.training.loop import ExtraLoss


def train_reptile(model: nn.Module, train: TrainOnData, *, inner_lr: float, meta_lr: float,
                  epochs: int, extra_loss: ExtraLoss | None = None) -> dict[str, float]:
    """Inner SGD over `epochs` passes of `train` (DP-SGD under DP), then the meta
    interpolation (in place; post-processing, it reads no data)."""
    start = {name: torch.as_tensor(value) for name, value in full_state(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    metrics = train(model, torch.optim.SGD(params, lr=inner_lr), epochs=epochs,
                    extra_loss=extra_loss)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                origin = start[canonical_name(name)].to(param.device, param.dtype)
                param.copy_(origin + meta_lr * (param - origin))
    return metrics
