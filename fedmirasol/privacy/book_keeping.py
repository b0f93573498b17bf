"""Per-sample gradients of Linear weights kept as the layer's inputs and output gradients.

`privacy.grad-sample-mode = "bk"` (book-keeping, Bu et al. 2023, "Differentially private
optimization on large model at small cost"). A Linear weight's per-sample gradient is
``G_i = g_i^T a_i`` (``a_i``: the sample's ``T x in`` inputs, ``g_i``: its ``T x out`` output
gradients). DP-SGD needs only two things from the ``G_i``: their norms and the clipped sum
``sum_i c_i G_i``. Both can be had without ever forming the ``B x out x in`` rows:

- ``||G_i||^2 = <a_i a_i^T, g_i g_i^T>`` (the ghost norm: two ``T x T`` Gram matrices),
- ``sum_i c_i G_i = (c * g)^T a``: one matrix product over the whole batch, the same product
  plain SGD's backward computes (with the clip factors folded into ``g``).

Which of the two a layer gets is chosen per layer, as in mixed ghost clipping (Bu et al.
2022), here by compute: the rows are formed by the same multiply-adds as the clipped sum
``(c * g)^T a`` (``T in out`` a sample), after which their norm and their clipped sum take one
pass each over ``in out`` numbers, while the ghost norm adds its two Gram matrices,
``T^2 (in + out)`` multiply-adds. A pass over numbers that do not stay in the cache costs
about as much as `PASS_COST` multiply-adds a number (measured in the training step of
Mirasol small at batch 8 and 32: the crossover lies between 32 and 37 tokens for 128 x 128
and 128 x 256 weights). A layer is therefore book-kept where ``T^2 (in + out) <= 2 PASS_COST
in out`` or where its rows would take more than `ROWS_MAX_BYTES` (the rows' memory: Mirasol
small's video patch projection takes 12 MiB of rows at batch 8 and 48 MiB at batch 32, for
about 1 ms a step at batch 8; its Gram matrices are kept instead, which holds DP training's
memory near plain SGD's); elsewhere it gets its rows, their norms taken right away while
they are in the cache. On Mirasol small the layers of 1-32 tokens a sample are book-kept,
those of 48 and more get their rows (but the patch projections, over the cap), and those
of 37-38 tokens, near the crossover, go either way with their widths.

`LinearRows` is what the backward pass leaves on ``weight.grad_sample`` for
`LeanDPOptimizer`, which clips and sums it like a tensor of rows; `dense()` gives the rows
where a caller needs them (user-level DP averages a user's rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils._expanded_weights.expanded_weights_impl import ExpandedWeight
from torch.nn.utils._expanded_weights.expanded_weights_utils import (
    set_grad_sample_if_exists,
    unpack_expanded_weight_or_tensor,
)
from torch.nn.utils._expanded_weights.linear_expanded_weights import LinearPerSampleGrad


# Multiply-adds that one pass over a number in memory costs (the rows' norm, their clipped sum).
PASS_COST = 8
# The most memory one Linear weight's per-sample rows may take (a bigger layer is book-kept).
ROWS_MAX_BYTES = 8 * 2**20


def keeps_ghost(batch: int, tokens: int, inputs: int, outputs: int, item_bytes: int) -> bool:
    """Whether a Linear layer's per-sample gradients are kept as inputs and output gradients
    (ghost norm) rather than as rows: its two Gram matrices (``T^2 (in + out)`` multiply-adds a
    sample) cost no more than a norm and a clipped sum over its rows (two passes over
    ``in out`` numbers), or its rows (``B in out`` numbers) would exceed `ROWS_MAX_BYTES`."""
    return (tokens * tokens * (inputs + outputs) <= 2 * PASS_COST * inputs * outputs
            or batch * inputs * outputs * item_bytes > ROWS_MAX_BYTES)


def _keeps_ghost(inputs: torch.Tensor, output_grads: torch.Tensor) -> bool:
    batch, tokens, width = inputs.shape
    return keeps_ghost(batch, tokens, width, output_grads.shape[-1], inputs.element_size())


class LinearRows:
    """The ``B`` per-sample gradients (``out x in`` each) of one Linear weight in one pass."""

    def __init__(self, inputs: torch.Tensor, output_grads: torch.Tensor) -> None:
        """`inputs` ``B x T x in``, `output_grads` ``B x T x out``."""
        self.inputs: torch.Tensor | None = inputs
        self.output_grads: torch.Tensor | None = output_grads
        self.rows: torch.Tensor | None = None
        if not _keeps_ghost(inputs, output_grads):
            self._densify()
        self._norms = self._squared_norms()  # now, while the tensors are in the cache

    def __len__(self) -> int:
        return self.batch_size

    @property
    def batch_size(self) -> int:
        kept = self.rows if self.rows is not None else self.inputs
        assert kept is not None
        return int(kept.shape[0])

    @property
    def device(self) -> torch.device:
        kept = self.rows if self.rows is not None else self.inputs
        assert kept is not None
        return kept.device

    def _densify(self) -> None:
        if self.rows is None:
            assert self.inputs is not None and self.output_grads is not None
            self.rows = torch.bmm(self.output_grads.transpose(1, 2), self.inputs)
            self.inputs = self.output_grads = None

    def dense(self) -> torch.Tensor:
        """The ``B x out x in`` per-sample gradients."""
        self._densify()
        assert self.rows is not None
        return self.rows

    def add(self, other: "LinearRows") -> None:
        """Add a second use of the weight in the same pass (a module run once per chunk):
        each sample's gradient is the sum of its uses, i.e. one use over all their tokens."""
        if self.rows is None and other.rows is None:
            assert self.inputs is not None and other.inputs is not None
            assert self.output_grads is not None and other.output_grads is not None
            self.inputs = torch.cat([self.inputs, other.inputs], dim=1)
            self.output_grads = torch.cat([self.output_grads, other.output_grads], dim=1)
            if not _keeps_ghost(self.inputs, self.output_grads):
                self._densify()
        else:
            self.rows = self.dense() + other.dense()
        self._norms = self._squared_norms()

    def _squared_norms(self) -> torch.Tensor:
        if self.rows is not None:
            return torch.linalg.vector_norm(self.rows.reshape(len(self.rows), -1), dim=1).square()
        assert self.inputs is not None and self.output_grads is not None
        inputs_gram = torch.bmm(self.inputs, self.inputs.transpose(1, 2))
        grads_gram = torch.bmm(self.output_grads, self.output_grads.transpose(1, 2))
        # <A, G> of two Gram matrices is >= 0; rounding must not make a norm's sqrt NaN
        return (inputs_gram * grads_gram).sum(dim=(1, 2)).clamp_(min=0)

    def squared_norms(self) -> torch.Tensor:
        """``B`` squared Frobenius norms of the per-sample gradients."""
        return self._norms

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i weights[i] * G_i`` (``out x in``)."""
        if self.rows is not None:
            return (weights @ self.rows.reshape(len(self.rows), -1)).view(self.rows.shape[1:])
        assert self.inputs is not None and self.output_grads is not None
        scaled = self.output_grads * weights.view(-1, 1, 1)
        return scaled.reshape(-1, scaled.shape[-1]).T @ self.inputs.reshape(-1, self.inputs.shape[-1])


def per_sample_rows(grad_sample: Any) -> torch.Tensor:
    """A parameter's ``B x *shape`` per-sample gradients, whichever form the pass left."""
    return grad_sample.dense() if isinstance(grad_sample, LinearRows) else grad_sample


class BookKeepingLinear(LinearPerSampleGrad):
    """Expanded weights' Linear whose weight gets `LinearRows` (not its rows) and whose saved
    inputs are dropped from the autograd context once its backward has run."""

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:  # type: ignore[override]
        inputs, weight = ctx.args
        bias = ctx.kwargs["bias"]
        del ctx.args, ctx.kwargs
        input_grad = (grad_output.matmul(unpack_expanded_weight_or_tensor(weight))
                      if inputs.requires_grad else None)
        if not ctx.batch_first:
            grad_output, inputs = grad_output.transpose(0, 1), inputs.transpose(0, 1)
        batch = inputs.shape[0]
        output_grads = grad_output.reshape(batch, -1, grad_output.shape[-1])
        if isinstance(weight, ExpandedWeight):
            if weight.batch_size != batch:
                raise RuntimeError(f"book-keeping expects batch {weight.batch_size}, got {batch}")
            rows = LinearRows(inputs.reshape(batch, -1, inputs.shape[-1]).detach(), output_grads)
            original = weight.orig_weight
            if getattr(original, "grad_sample", None) is None:
                original.grad_sample = rows
            else:
                original.grad_sample.add(rows)
        set_grad_sample_if_exists(bias, lambda _: output_grads.sum(dim=1))
        return None, None, input_grad, None, None
