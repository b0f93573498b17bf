"""Per-sample gradients of Mirasol's per-sample objective from PyTorch's expanded weights.

`privacy.grad-sample-mode = "ew"` (and "bk": `fedmirasol.privacy.book_keeping`). For one call,
every trainable parameter is swapped for an `ExpandedWeight` (what `torch.nn.utils.
_per_sample_grad.call_for_per_sample_grads` does, without its functional call), whose
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

Memory: PyTorch's expanded-weights functions keep their saved inputs as plain attributes of
the autograd context (``ctx.args``), which live until the whole graph is freed, after the
backward pass; so every layer's input stays alive while the per-sample gradients pile up
(small config, batch 8: 1.34x the memory of plain SGD). During our call the Linear,
LayerNorm and Embedding functions are replaced by subclasses that run the same forward and
backward and then drop those attributes, as autograd frees a node's saved tensors once it
has run. The graph can therefore be backpropagated once only (training never retains it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils._expanded_weights import expanded_weights_impl
from torch.nn.utils._expanded_weights.expanded_weights_impl import ExpandedWeight
from torch.nn.utils._expanded_weights.embedding_expanded_weights import EmbeddingPerSampleGrad
from torch.nn.utils._expanded_weights.expanded_weights_utils import (
    set_grad_sample_if_exists,
    sum_over_all_but_batch_and_last_n,
    unpack_expanded_weight_or_tensor,
)
from torch.nn.utils._expanded_weights.layer_norm_expanded_weights import LayerNormPerSampleGrad
from torch.nn.utils._expanded_weights.linear_expanded_weights import LinearPerSampleGrad

from fedmirasol.privacy.book_keeping import BookKeepingLinear
from fedmirasol.privacy.objective import sample_losses

# Attributes the per-sample machinery (expanded weights, DPOptimizer) leaves on parameters.
_PER_SAMPLE_ATTRIBUTES = ("grad_sample", "summed_grad")


def _releasing(function: type[torch.autograd.Function], *saved: str) -> type:
    """`function` whose backward drops the context attributes `saved` once it has run."""

    class Releasing(function):  # type: ignore[misc, valid-type]
        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            try:
                return function.backward(ctx, *grads)
            finally:
                for name in saved:
                    if hasattr(ctx, name):
                        delattr(ctx, name)

    Releasing.__name__ = f"Releasing{function.__name__}"
    return Releasing


class _LayerNormFromSavedStatistics(LayerNormPerSampleGrad):
    """Expanded weights' LayerNorm whose per-sample weight gradient normalizes the input with
    the mean and 1/std its forward saved, instead of running the layer norm a second time."""

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:  # type: ignore[override]
        inputs, normalized_shape = ctx.args
        weight, bias = getattr(ctx, "weight", None), getattr(ctx, "bias", None)
        input_grad = None
        if inputs.requires_grad:
            input_grad = torch.ops.aten.native_layer_norm_backward(
                grad_output, inputs, normalized_shape, ctx.mean, ctx.rstd,
                unpack_expanded_weight_or_tensor(weight), unpack_expanded_weight_or_tensor(bias),
                (True, False, False))[0]
        kept = len(normalized_shape)
        if isinstance(weight, ExpandedWeight):
            # (x - mean) * rstd * grad in one buffer (the same products, in the same order)
            scaled = (inputs - ctx.mean).mul_(ctx.rstd).mul_(grad_output)
            set_grad_sample_if_exists(weight, lambda _: sum_over_all_but_batch_and_last_n(
                scaled, kept))
        if isinstance(bias, ExpandedWeight):
            set_grad_sample_if_exists(bias, lambda _: sum_over_all_but_batch_and_last_n(
                grad_output, kept))
        return (None, None, input_grad) + (None,) * 4


_RELEASING = {
    F.linear: _releasing(LinearPerSampleGrad, "args", "kwargs"),
    F.layer_norm: _releasing(_LayerNormFromSavedStatistics, "args", "mean", "rstd"),
    F.embedding: _releasing(EmbeddingPerSampleGrad, "input"),
}


# "bk": Linear weights keep their inputs and output gradients instead of their rows.
_BOOK_KEEPING = {**_RELEASING, F.linear: BookKeepingLinear}


@contextmanager
def _dispatching_to(functions: Mapping[Any, type]) -> Iterator[None]:
    """Expanded weights dispatch to `functions` inside the block (the graph nodes built in it
    keep them for their backward)."""
    handled = expanded_weights_impl.HANDLED_FUNCTIONS
    originals = {function: handled[function] for function in functions}
    handled.update(functions)
    try:
        yield
    finally:
        handled.update(originals)


@contextmanager
def _expanded_parameters(model: nn.Module, batch_size: int) -> Iterator[None]:
    """Every trainable parameter of `model` is an `ExpandedWeight` of `batch_size` inside the
    block (a parameter tied into several modules is one `ExpandedWeight` in all of them).

    What ``call_for_per_sample_grads`` sets up through ``torch.func.functional_call``, by
    swapping the entries of the modules' parameter dicts: the functional call's generic
    reparametrization (walking the module tree, untying, accessor objects) cost about 6 ms
    of a 70 ms forward of Mirasol small (192 parameter tensors)."""
    slots = [(module, name, parameter) for module in model.modules()
             for name, parameter in module._parameters.items()
             if parameter is not None and parameter.requires_grad]
    expanded: dict[int, ExpandedWeight] = {}
    for _, _, parameter in slots:
        if getattr(parameter, "grad_sample", None) is not None:
            raise RuntimeError("per-sample gradients of the previous batch were not cleared")
        if id(parameter) not in expanded:
            expanded[id(parameter)] = ExpandedWeight(parameter, batch_size, "sum")
    try:
        for module, name, parameter in slots:
            module._parameters[name] = expanded[id(parameter)]
        yield
    finally:
        for module, name, parameter in slots:
            module._parameters[name] = parameter


class ExpandedWeightsObjective:
    """``B`` per-sample losses whose ``.sum().backward()`` fills ``p.grad_sample`` (not
    ``p.grad``) for every trainable parameter of `model` the batch reaches; with
    `book_keeping`, a Linear weight's is `LinearRows` (`fedmirasol.privacy.book_keeping`)."""

    def __init__(self, model: nn.Module, *, book_keeping: bool = False) -> None:
        self.model = model
        self._functions = _BOOK_KEEPING if book_keeping else _RELEASING

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        size = int(batch["label"].shape[0])
        with _expanded_parameters(self.model, size), _dispatching_to(self._functions):
            return sample_losses(self.model, batch)

    def close(self) -> None:
        """Remove the per-sample attributes from the model's parameters."""
        for parameter in self.model.parameters():
            for name in _PER_SAMPLE_ATTRIBUTES:
                if hasattr(parameter, name):
                    delattr(parameter, name)
