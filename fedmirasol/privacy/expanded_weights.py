"""Per-sample gradients of Mirasol's per-sample objective from PyTorch's expanded weights.

`privacy.grad-sample-mode = "ew"`. For one call, `torch.nn.utils._per_sample_grad.
call_for_per_sample_grads` swaps every trainable parameter for an `ExpandedWeight`, whose
Linear, LayerNorm and Embedding backward functions compute each sample's weight gradient
(``p.grad_sample``, ``B x *p.shape``) *instead of* the summed one. Opacus' hooks mode lets
autograd compute the summed weight gradients and then computes the per-sample ones again in
its hooks; here that work is done once, which is why this mode is the fastest on Mirasol
(benchmarks/dp_overhead.py). A parameter used more than once in a pass (the TTM combiner's
modules run once per chunk) gets the sum of its per-sample contributions.

Opacus' own `GradSampleModuleExpandedWeights` is not used: it takes the batch size from
``x.shape[0]`` (Mirasol's input is a dict) and covers only the module's forward, while the
text decoder runs inside the loss (`per_sample_loss` calls ``model.text_decoder``). The
whole objective, forward and loss, is therefore run under expanded weights, so every
parameter the loss reaches gets its per-sample gradient. The result feeds the same
`DPOptimizer` (clip, noise, accountant) as the other modes.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

from fedmirasol.privacy.objective import per_sample_loss

# Attributes the per-sample machinery (expanded weights, DPOptimizer) leaves on parameters.
_PER_SAMPLE_ATTRIBUTES = ("grad_sample", "summed_grad")


class _Objective(nn.Module):
    """Mirasol's per-sample loss as one module, so one functional call covers all of it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return per_sample_loss(self.model, batch, self.model(batch))


class ExpandedWeightsObjective:
    """``B`` per-sample losses whose ``.sum().backward()`` fills ``p.grad_sample`` (not
    ``p.grad``) for every trainable parameter of `model` the batch reaches."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._objective = _Objective(model)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        size = int(batch["label"].shape[0])
        forward = call_for_per_sample_grads(self._objective, batch_size=size,
                                            loss_reduction="sum")
        return forward(batch)

    def close(self) -> None:
        """Remove the per-sample attributes from the model's parameters."""
        for parameter in self.model.parameters():
            for name in _PER_SAMPLE_ATTRIBUTES:
                if hasattr(parameter, name):
                    delattr(parameter, name)
