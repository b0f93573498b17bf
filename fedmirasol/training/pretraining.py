"""Attaching a run's pre-training objective (`[pretrain]`) to its model, with what the objective
needs from data: zero-shot prompts per class and, for `negatives = "public"`, public clips."""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.config.pretrain import PretrainConfig
from fedmirasol.data.batch import Batch, collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.objectives import Contrastive, Objective, attach_objective

PUBLIC_NEGATIVES_SEED = 0x9E6  # public data: a fixed, published seed


def synthetic_prompts(model_config: MirasolConfig) -> list[list[str]]:
    """The built-in synthetic task's zero-shot prompts, per class."""
    data = SyntheticConfig.for_model(model_config)
    return [data.class_prompts(label) for label in range(data.num_classes)]


def public_negatives(model_config: MirasolConfig, count: int) -> Batch:
    """`count` clips of the public variant of the synthetic task (its other shapes and
    pitches), with their captions: public data, the same on every client."""
    data = SyntheticConfig.for_model(model_config, public=True)
    clips = SyntheticAVDataset(data, count, seed=PUBLIC_NEGATIVES_SEED)
    return collate([clips[i] for i in range(count)])


def attach_pretraining(model: nn.Module, pretrain: PretrainConfig,
                       class_prompts: list[list[str]] | None = None) -> Objective | None:
    """Attach `pretrain.objective` to `model` (nothing for "none"); a contrastive objective
    gets the zero-shot `class_prompts` and, with public negatives, its public clips."""
    if not pretrain.enabled:
        return None
    objective = attach_objective(model, pretrain.objective, **pretrain.options())
    if isinstance(objective, Contrastive):
        objective.class_prompts = class_prompts
        if pretrain.negatives == "public":
            with torch.random.fork_rng(devices=[]):
                objective.set_public_negatives(
                    public_negatives(model.config, pretrain.public_negatives))
    return objective
