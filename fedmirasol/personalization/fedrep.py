"""FedRep (Collins et al., 2021): the personal head and the shared body are trained in turn.

Each round: `head_epochs` over the local data with only the personal layers trainable (the
received body fixed), then `body_epochs` with only the shared layers trainable (the new head
fixed). Only the body is sent; the head stays in the client's state.
"""

from __future__ import annotations

import math
from typing import Collection

from torch import nn

from fedmirasol.core.parameters import canonical_name
from fedmirasol.personalization.trainable import MakeOptimizer, TrainOnData, only_trainable
from fedmirasol.training.loop import ExtraLoss


def train_fedrep(model: nn.Module, train: TrainOnData, make_optimizer: MakeOptimizer, *,
                 personal: Collection[str], head_epochs: int, body_epochs: int,
                 extra_loss: ExtraLoss | None = None) -> dict[str, float]:
    """Head phase then body phase (each a pass of `train`: under DP, DP-SGD over the trainable
    part); `extra_loss` (a proximal term on the shared weights) applies to the body phase
    only. Returns the body phase's metrics plus per-phase step counts."""
    personal = set(personal)
    shared = [canonical_name(name) for name, _ in model.named_parameters()
              if canonical_name(name) not in personal]
    metrics: dict[str, float] = {"head-steps": 0.0, "body-steps": 0.0}
    phases = (("head", personal, head_epochs, None), ("body", shared, body_epochs, extra_loss))
    for phase, names, epochs, extra in phases:
        if epochs == 0:
            continue
        with only_trainable(model, names) as trainable:
            if not trainable:
                raise ValueError(f"fedrep's {phase} phase has no trainable parameters")
            result = train(model, make_optimizer(model, None), epochs=epochs, extra_loss=extra)
        metrics[f"{phase}-steps"] = result["steps"]
        metrics[f"{phase}-loss"] = result["loss"]
        metrics.update({k: v for k, v in result.items() if k.startswith("loss")})
    metrics["steps"] = metrics["head-steps"] + metrics["body-steps"]
    metrics.setdefault("loss", metrics.get("head-loss", math.nan))
    return metrics
