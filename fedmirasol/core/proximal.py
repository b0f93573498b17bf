"""FedProx's proximal term (Li et al., 2020): mu/2 * ||w - w_global||^2 over shared weights."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from fedmirasol.core.parameters import canonical_name


def proximal_term(
    mu: float, global_params: Mapping[str, np.ndarray], names: Iterable[str] | None = None
) -> Callable[[nn.Module], torch.Tensor]:
    """An `extra_loss(model)` adding mu/2 * ||w - w_global||^2 over the named parameters.

    Only trainable parameters present in `global_params` take part (the shared ones): local
    parameters (FedBN's normalization layers) are not pulled towards anything.
    """
    if mu < 0:
        raise ValueError(f"proximal mu must be >= 0, got {mu}")
    selected = set(global_params if names is None else names)
    anchors: dict[str, torch.Tensor] = {}

    def extra_loss(model: nn.Module) -> torch.Tensor:
        total = None
        for name, param in model.named_parameters():
            key = canonical_name(name)
            if not param.requires_grad or key not in selected:
                continue
            anchor = anchors.get(key)
            if anchor is None or anchor.device != param.device:
                anchor = torch.as_tensor(global_params[key], dtype=param.dtype,
                                         device=param.device)
                anchors[key] = anchor
            term = (param - anchor).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the proximal term found none of the global parameters in the model")
        return 0.5 * mu * total

    return extra_loss
