"""Book-keeping (`privacy.grad-sample-mode = "bk"`): a Linear weight's per-sample gradients kept
as inputs and output gradients give the norms and clipped sums of the explicit rows."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.privacy.book_keeping import LinearRows, per_sample_rows
from fedmirasol.privacy.dp_training import per_sample_losses
from privacy_fixtures import clips, tiny_model
from fedmirasol.data.batch import collate


def _pair(batch: int, tokens: int, inputs: int, outputs: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, tokens, inputs, generator=generator, dtype=torch.float64),
            torch.randn(batch, tokens, outputs, generator=generator, dtype=torch.float64))


def _rows(inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Each sample's weight gradient, out x in, computed sample by sample."""
    return torch.stack([g.T @ a for a, g in zip(inputs, grads)])


@pytest.mark.parametrize("tokens, kept_as", [(3, "ghost"), (40, "rows")])
def test_norms_and_clipped_sum_equal_the_explicit_rows(tokens: int, kept_as: str) -> None:
    inputs, grads = _pair(5, tokens, 16, 8, seed=0)  # ghost while T (16 + 8) <= 16 * 8
    rows = LinearRows(inputs, grads)
    assert (rows.rows is None) == (kept_as == "ghost")
    explicit = _rows(inputs, grads)
    weights = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(rows.squared_norms(), explicit.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(rows.weighted_sum(weights), torch.einsum("i,ijk->jk", weights, explicit))
    torch.testing.assert_close(per_sample_rows(rows), explicit)
    assert len(rows) == 5


@pytest.mark.parametrize("first, second", [(3, 2), (3, 40), (40, 3)])
def test_a_weight_used_twice_gets_the_sum_of_its_uses(first: int, second: int) -> None:
    """A module run once per chunk: each sample's gradient is the sum over the uses, whatever
    form each use was kept in (ghost + ghost may also outgrow ghost and become rows)."""
    a1, g1 = _pair(4, first, 16, 8, seed=1)
    a2, g2 = _pair(4, second, 16, 8, seed=2)
    rows = LinearRows(a1, g1)
    rows.add(LinearRows(a2, g2))
    explicit = _rows(a1, g1) + _rows(a2, g2)
    weights = torch.rand(4, dtype=torch.float64)
    torch.testing.assert_close(rows.squared_norms(), explicit.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(rows.weighted_sum(weights), torch.einsum("i,ijk->jk", weights, explicit))


def test_bk_leaves_the_per_sample_gradients_ew_computes() -> None:
    """On the tiny model (both kinds of Linear, layer norms, embeddings) every parameter's
    per-sample gradient under "bk" equals "ew"'s explicit one."""
    batch = collate([clips(3)[i] for i in range(3)])
    found = {}
    for mode in ("bk", "ew"):
        model = tiny_model()
        losses_of, close = per_sample_losses(model, mode)
        losses_of(batch).sum().backward()
        found[mode] = {name: per_sample_rows(p.grad_sample).clone()
                       for name, p in model.named_parameters() if p.grad_sample is not None}
        kinds = {type(p.grad_sample) for p in model.parameters() if p.grad_sample is not None}
        assert (LinearRows in kinds) == (mode == "bk")
        close()
        assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert found["bk"].keys() == found["ew"].keys()
    for name, expected in found["ew"].items():
        torch.testing.assert_close(found["bk"][name], expected, rtol=1e-4, atol=1e-6, msg=name)
