"""Opacus ghost clipping made to run on Mirasol (per-sample gradient norms without the
per-sample gradients), for benchmarks/dp_overhead.py.

Why Opacus 1.6's `GradSampleModuleFastGradientClipping(use_ghost_clipping=True)` fails on
Mirasol, in the order the backward pass meets the problems:

1. ``RuntimeError: view size is not compatible with input tensor's size and stride`` in
   `opacus/grad_sample/embedding_norm_sample.py` (``input_ids.view(-1, 1)``), raised from the
   ``nn.Embedding`` inside `LearnedTokens` (``modality``, ``video_gate.absent``,
   ``combiner.queries``, ``autoregressive.slot_embedding``, ...): their index tensor is
   ``arange(count).expand(batch, count)``, whose batch stride is 0, and Opacus `view`s it.
2. Opacus' ``nn.Linear`` norm sampler handles inputs of 2 or 3 dimensions only; Mirasol's
   encoders and combiner apply Linear layers to ``B x chunks x tokens x width`` (4 dims), for
   which it returns no norm at all (the parameter then has no ``_norm_sample``).
3. A module with a norm sampler that runs more than once in a forward pass raises
   ``NotImplementedError: Parameter tying is not supported with Ghost Clipping``; the TTM
   combiner runs its read/process/write modules once per chunk. (The per-call norms cannot
   be combined: a sample's gradient is the sum over the calls, and its norm needs the cross
   terms.)

`MirasolGhostClipping` fixes the three without touching the model: the embedding indices are
made contiguous before Opacus' sampler reads them; Linear inputs are flattened to
``B x positions x width`` (a sample's weight gradient is the sum over all its positions,
whatever their layout) and each layer's norm is computed the cheaper way, from the Gram
matrices (ghost: ``positions^2`` per sample) or from the per-sample gradient itself
(``in x out``); and a module called more than once in the pass goes through Opacus' fast
gradient clipping path (per-sample gradients accumulated over the calls, then their norm).
The norms match the exact per-sample ones (tests/test_privacy_grad_sample_modes.py).

Ghost clipping needs two backward passes (norms, then the reweighted loss), so on the CPU it
costs about twice a plain step, more than the per-sample gradients of `ew` or `hooks`
(benchmarks/dp_overhead.py); its advantage is memory on accelerators with large batches.
Training uses `ew` (fedmirasol.privacy.expanded_weights); this module is measured, not wired.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample
from torch import nn


def embedding_norm_sample(layer: nn.Embedding, activations: list[torch.Tensor],
                          backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus' embedding norm sampler on contiguous indices (LearnedTokens expands them)."""
    return compute_embedding_norm_sample(layer, [activations[0].contiguous()], backprops)


def linear_norm_sample(layer: nn.Linear, activations: list[torch.Tensor],
                       backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of a Linear layer applied to inputs of any rank >= 2."""
    batch = backprops.shape[0]
    inputs = activations[0].to(backprops.dtype).reshape(batch, -1, activations[0].shape[-1])
    grads = backprops.reshape(batch, -1, backprops.shape[-1])
    norms: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        positions, fan_in, fan_out = inputs.shape[1], inputs.shape[2], grads.shape[2]
        if positions * positions <= fan_in * fan_out:
            # ||sum_t g_t a_t^T||^2 = sum_{t,s} (g_t . g_s)(a_t . a_s)
            gram = torch.bmm(grads, grads.transpose(1, 2)) * torch.bmm(inputs, inputs.transpose(1, 2))
            norms[layer.weight] = gram.sum(dim=(1, 2)).clamp(min=0).sqrt()
        else:
            norms[layer.weight] = torch.bmm(grads.transpose(1, 2), inputs).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = grads.sum(dim=1).norm(dim=1)
    return norms


class MirasolGhostClipping(GradSampleModuleFastGradientClipping):
    """`GradSampleModuleFastGradientClipping` with the three fixes above; use it with
    Opacus' `DPOptimizerFastGradientClipping` and `DPTensorFastGradientClipping` as usual."""

    NORM_SAMPLERS = {
        **GradSampleModuleFastGradientClipping.NORM_SAMPLERS,
        nn.Embedding: embedding_norm_sample,
        nn.Linear: linear_norm_sample,
    }

    def capture_activations_hook(self, module: nn.Module, forward_input: Any,
                                 forward_output: Any) -> None:
        # Count the module's calls in this pass; Opacus' tying check is skipped (fix 3).
        stored = len(getattr(module, "activations", []))
        ghost, self.use_ghost_clipping = self.use_ghost_clipping, False
        try:
            super().capture_activations_hook(module, forward_input, forward_output)
        finally:
            self.use_ghost_clipping = ghost
        if len(getattr(module, "activations", [])) > stored:
            module._ghost_calls = getattr(module, "_ghost_calls", 0) + 1

    def capture_backprops_hook(self, module: nn.Module, _forward_input: Any,
                               forward_output: Any, loss_reduction: str,
                               batch_first: bool) -> None:
        ghost = self.use_ghost_clipping
        self.use_ghost_clipping = ghost and getattr(module, "_ghost_calls", 0) == 1
        try:
            super().capture_backprops_hook(module, _forward_input, forward_output,
                                           loss_reduction, batch_first)
        finally:
            self.use_ghost_clipping = ghost
            if not getattr(module, "activations", None):
                module._ghost_calls = 0  # every call of this pass is done
