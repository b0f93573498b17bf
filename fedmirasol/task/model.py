"""The run's initial model, built the same way on the server and on every client."""

from __future__ import annotations

from typing import Collection

import torch
from torch import nn

from fedmirasol.config.run import RunConfig
from fedmirasol.models import build_model
from fedmirasol.models.config import MirasolConfig
from fedmirasol.task import leaf
from fedmirasol.core.parameters import ParameterSplit, canonical_name
from fedmirasol.pretrained.checkpoint import frozen_names, load_pretrained
from fedmirasol.task.data import class_prompts
from fedmirasol.training.pretraining import attach_pretraining


def model_config(config: RunConfig) -> MirasolConfig:
    """The model the run trains: `model.*`, with a LEAF task's geometry on LEAF data."""
    return leaf.model_config(config) if config.data.source == "leaf" else config.model.mirasol


def init_model(config: RunConfig) -> nn.Module:
    """The run's initial model, identical on every process for a given seed (and pre-trained
    checkpoint, `pretrained.*`, whose frozen parameters come back with requires_grad off),
    carrying the run's pre-training objective (`pretrain.objective`) if it has one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(model_config(config))
        attach_pretraining(model, config.pretrain, class_prompts(config))
    load_pretrained(model, config.pretrained)
    return model


def parameter_split(model: nn.Module, config: RunConfig) -> ParameterSplit:
    """The run's ParameterSplit of `model`: `config.local_selectors()` stay on the clients,
    `pretrained.freeze`/`trainable` leave parameters neither shared nor local."""
    return ParameterSplit.from_model(model, config.local_selectors(),
                                     frozen_names(config.pretrained, model))


def fixed_shared(model: nn.Module, shared: Collection[str]) -> list[str]:
    """The `shared` names of `model`'s constants: the buffers that training never changes (the
    log-mel front end's STFT window and mel filterbank), i.e. every buffer but a normalization
    layer's running statistics. No honest update changes them; the server keeps them as built."""
    running = {canonical_name(f"{module_name}.{name}" if module_name else name)
               for module_name, module in model.named_modules()
               if isinstance(module, nn.modules.batchnorm._NormBase)
               for name, _ in module.named_buffers(recurse=False)}
    parameters = {canonical_name(name) for name, _ in model.named_parameters()}
    return [name for name in shared if name not in parameters and name not in running]


def trainable_shared(model: nn.Module, shared: Collection[str]) -> list[str]:
    """The `shared` names of `model`'s trainable parameters (what client-level DP clips and
    noises; buffers keep their global value)."""
    return [canonical_name(name) for name, param in model.named_parameters()
            if param.requires_grad and canonical_name(name) in shared]
