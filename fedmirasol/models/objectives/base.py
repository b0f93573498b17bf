"""What every pre-training objective provides; the model keeps an attached one as `objective`.

An objective is an `nn.Module` attached to the model it trains (Mirasol or late fusion) as the
submodule named `objective`: its own parameters (decoders, projections, a text encoder) then
live in the model's state_dict under ``objective.*``, travel with the rest of the model in
federated rounds, and a fine-tuning run that loads the checkpoint drops them.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn

Batch = Mapping[str, torch.Tensor]
ATTRIBUTE = "objective"  # the model's submodule holding an attached objective


class Objective(nn.Module):
    """A self-supervised or contrastive objective over a model's encoders."""

    name: ClassVar[str]

    def trains(self, name: str) -> bool:
        """Whether the model's state_dict entry `name` is trained by this objective (everything
        else stays frozen and is never sent)."""
        raise NotImplementedError

    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``B`` losses, each depending on its own sample only (what DP-SGD clips)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss for ordinary training and each of its terms."""
        raise NotImplementedError

    def before_training(self, model: nn.Module) -> None:
        """Called before each local training pass (outside any per-sample-gradient wrapper)."""

