"""Pre-training objectives (VideoMAE, video-text contrastive), one per file, and how a model
carries one: `attach_objective` adds it as the model's ``objective`` submodule, and the
training loops ask `training_loss` (or, under DP-SGD, the objective's `per_sample_loss`)
instead of the classification loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedmirasol.models.loss import mirasol_loss
from fedmirasol.models.objectives.base import ATTRIBUTE, Batch, Objective
from fedmirasol.models.objectives.contrastive import Contrastive
from fedmirasol.models.objectives.videomae import VideoMAE

OBJECTIVES: dict[str, type[Objective]] = {VideoMAE.name: VideoMAE, Contrastive.name: Contrastive}


def attach_objective(model: nn.Module, name: str, **options: Any) -> Objective:
    """Build objective `name` for `model` and attach it as ``model.objective``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    if objective_of(model) is not None:
        raise ValueError(f"the model already has the objective {objective_of(model).name!r}")
    objective = OBJECTIVES[name](model, **options)
    model.add_module(ATTRIBUTE, objective)
    return objective


def objective_of(model: nn.Module) -> Objective | None:
    """The objective attached to `model` (or to the model a wrapper holds), if any."""
    while not isinstance(getattr(model, ATTRIBUTE, None), Objective) \
            and isinstance(getattr(model, "_module", None), nn.Module):
        model = model._module
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, Objective) else None


def untrained_names(model: nn.Module) -> set[str]:
    """The state_dict entries the attached objective does not train (none without one)."""
    objective = objective_of(model)
    if objective is None:
        return set()
    return {name for name in model.state_dict() if not objective.trains(name)}


def training_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The attached objective's loss, or Mirasol's classification objective without one."""
    objective = objective_of(model)
    return mirasol_loss(model, batch) if objective is None else objective.loss(model, batch)


__all__ = ["ATTRIBUTE", "OBJECTIVES", "Contrastive", "Objective", "VideoMAE", "attach_objective",
           "objective_of", "training_loss", "untrained_names"]
