"""Every grad-sample mode of `train_private` releases the same clipped, noised gradient, and
that gradient is the one computed independently, one sample at a time; the ghost-clipping
norms of `benchmarks/ghost_clipping.py` are the exact per-sample norms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from privacy_fixtures import clips, snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ghost_clipping import MirasolGhostClipping  # noqa: E402  (benchmarked, not a training mode)
from fedmirasol.data.batch import collate
from fedmirasol.models import build_model, get_config
from fedmirasol.privacy.accountant_state import new_accountant, total_steps
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_training import MODES, train_private
from fedmirasol.privacy.objective import per_sample_loss

CLIP = 1.0  # well below the tiny model's per-sample gradient norms (about 15-25): clipping acts
COUNT = 3


def model_for(combiner: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(get_config("tiny", combiner=combiner))


def one_step(combiner: str, mode: str, sigma: float) -> dict[str, torch.Tensor]:
    """The update of one full-batch DP-SGD step (q = 1, SGD at lr 1): minus the released
    gradient, i.e. (sum of clipped per-sample gradients + noise) / COUNT."""
    model = model_for(combiner)
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    accountant = new_accountant("rdp")
    plan = SamplingPlan.for_round(COUNT, COUNT, 1)
    metrics = train_private(model, clips(COUNT), optimizer, accountant=accountant, plan=plan,
                            epochs=1, noise_multiplier=sigma, max_grad_norm=CLIP,
                            grad_sample_mode=mode, generator=torch.Generator().manual_seed(0),
                            noise_generator=torch.Generator().manual_seed(7))
    assert plan.sample_rate == 1.0 and metrics["num_examples"] == COUNT
    assert total_steps(accountant) == 1  # accounted as before, whatever the mode
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


def independent_update(combiner: str) -> dict[str, torch.Tensor]:
    """Each sample's gradient from its own forward and backward pass, clipped to CLIP as
    Opacus does (factor min(1, C / (norm + 1e-6))), summed and averaged: minus that."""
    model = model_for(combiner)
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    data = clips(COUNT)
    total = [torch.zeros_like(p) for p in params]
    for index in range(COUNT):
        single = collate([data[index]])
        loss = per_sample_loss(model, single, model(single)).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        norm = torch.cat([g.flatten() for g in grads]).norm()
        assert norm > CLIP
        factor = min(1.0, CLIP / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return {name: -t / COUNT for name, t in zip(names, total)}


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_every_mode_releases_the_independently_computed_clipped_gradient(combiner):
    expected = independent_update(combiner)
    for mode in MODES:
        update = one_step(combiner, mode, sigma=0.0)
        for name, value in expected.items():
            torch.testing.assert_close(update[name], value, rtol=1e-3, atol=2e-6,
                                       msg=f"{mode}: {name}")


def test_modes_release_the_same_noised_gradient():
    hooks = one_step("transformer", "hooks", sigma=1.0)
    expanded = one_step("transformer", "ew", sigma=1.0)
    clean = one_step("transformer", "ew", sigma=0.0)
    noise = torch.cat([(expanded[name] - clean[name]).flatten() for name in clean])
    # sigma C / COUNT per coordinate: the noise is there, with its scale
    assert float(noise.std()) == pytest.approx(1.0 * CLIP / COUNT, rel=0.05)
    book_kept = one_step("transformer", "bk", sigma=1.0)
    for name in hooks:
        torch.testing.assert_close(expanded[name], hooks[name], rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(book_kept[name], hooks[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_ghost_clipping_norms_are_the_exact_per_sample_norms(combiner):
    model = model_for(combiner)
    batch = collate([clips(COUNT)[i] for i in range(COUNT)])
    params = list(model.parameters())
    exact = []
    for index in range(COUNT):
        single = {key: value[index : index + 1] for key, value in batch.items()}
        grads = torch.autograd.grad(per_sample_loss(model, single, model(single)).sum(), params,
                                    allow_unused=True)
        exact.append(torch.cat([g.flatten() for g in grads if g is not None]).norm())
    wrapped = MirasolGhostClipping(model, loss_reduction="sum", max_grad_norm=CLIP,
                                   use_ghost_clipping=True)
    try:
        per_sample_loss(model, batch, wrapped(batch)).sum().backward()
        torch.testing.assert_close(wrapped.get_norm_sample(), torch.stack(exact), rtol=1e-3,
                                   atol=1e-4)
    finally:
        wrapped._close()
