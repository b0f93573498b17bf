"""The run's initial model, built the same way on the server and on every client."""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.config.run import RunConfig
from fedmirasol.models import build_model
from fedmirasol.pretrained.checkpoint import load_pretrained


def init_model(config: RunConfig) -> nn.Module:
    """The run's initial model, identical on every process for a given seed (and pre-trained
    checkpoint, `pretrained.*`, whose frozen parameters come back with requires_grad off)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model.mirasol)
    load_pretrained(model, config.pretrained)
    return model
