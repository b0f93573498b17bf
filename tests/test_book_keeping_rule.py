"""Book-keeping's per-layer choice between ghost norms and per-sample rows: both forms give
the same norms and clipped sums, and the choice follows the compute rule and the memory cap."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.privacy import book_keeping
from fedmirasol.privacy.book_keeping import LinearRows, keeps_ghost


@pytest.mark.parametrize("batch, tokens, inputs, outputs",
                         [(1, 1, 3, 2), (4, 2, 16, 8), (5, 7, 9, 13), (3, 24, 32, 16),
                          (6, 5, 40, 3)])
def test_ghost_and_rows_give_the_same_norms_and_sums(monkeypatch: pytest.MonkeyPatch, batch: int,
                                                     tokens: int, inputs: int,
                                                     outputs: int) -> None:
    generator = torch.Generator().manual_seed(tokens * inputs + outputs)
    a = torch.randn(batch, tokens, inputs, generator=generator)
    g = torch.randn(batch, tokens, outputs, generator=generator)
    weights = torch.rand(batch, generator=generator)
    monkeypatch.setattr(book_keeping, "ROWS_MAX_BYTES", 0)  # every layer book-kept
    ghost = LinearRows(a, g)
    monkeypatch.setattr(book_keeping, "ROWS_MAX_BYTES", 2**62)
    monkeypatch.setattr(book_keeping, "keeps_ghost", lambda *shape: False)  # every layer rows
    rows = LinearRows(a, g)
    assert ghost.rows is None and rows.rows is not None
    explicit = torch.einsum("bto,bti->boi", g.double(), a.double())
    for kept in (ghost, rows):
        torch.testing.assert_close(kept.squared_norms().double(),
                                   explicit.flatten(1).square().sum(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kept.weighted_sum(weights).double(),
                                   torch.einsum("b,boi->oi", weights.double(), explicit),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, tokens, inputs, outputs, ghost", [
    (8, 1, 128, 8, True),        # the classifier: one token, Gram matrices 1 x 1
    (8, 32, 128, 256, True),     # Gram matrices' multiply-adds 12x the rows' numbers
    (8, 37, 128, 128, False),    # 21x
    (8, 24, 128, 128, True),     # 9x
    (32, 38, 128, 128, False),   # 23x
    (8, 48, 128, 128, False),    # 36x
    (8, 64, 3072, 128, True),    # video patch projection, 12 MiB of rows: over the cap
    (32, 64, 3072, 128, True),   # the same at batch 32: 48 MiB of rows, over the cap
    (32, 64, 768, 128, True),    # audio patch projection at batch 32: 12 MiB, over the cap
    (8, 272, 128, 256, False),   # the combiner's 272 tokens
])
def test_the_choice_follows_compute_and_the_memory_cap(batch: int, tokens: int, inputs: int,
                                                       outputs: int, ghost: bool) -> None:
    assert keeps_ghost(batch, tokens, inputs, outputs, 4) is ghost


def test_a_layer_used_twice_is_rechosen_on_all_its_tokens() -> None:
    """Two ghost uses of 10 tokens each (100 * 48 <= 16 * 32 * 16) make 20 tokens
    (400 * 48 > 8192): the joined use gets its rows, with the sum of both uses' norms."""
    a1, g1, a2, g2 = (torch.randn(3, 10, n, dtype=torch.float64) for n in (32, 16, 32, 16))
    kept = LinearRows(a1, g1)
    assert kept.rows is None
    kept.add(LinearRows(a2, g2))
    assert kept.rows is not None
    explicit = (torch.einsum("bto,bti->boi", g1, a1) + torch.einsum("bto,bti->boi", g2, a2))
    torch.testing.assert_close(kept.squared_norms(), explicit.flatten(1).square().sum(1))
