"""Small shared pieces for the privacy tests: a tiny model and a few synthetic clips."""

from __future__ import annotations

import functools

import torch

from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.task.data import Materialized
from fedmirasol.models import build_model, get_config

torch.set_num_threads(1)  # the test machines' cores are shared


@functools.lru_cache(maxsize=2)
def clips(count: int) -> Materialized:
    config = get_config("tiny")
    return Materialized(SyntheticAVDataset(SyntheticConfig.for_model(config), count, seed=3))


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(get_config("tiny"))


def sgd(model: torch.nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}
