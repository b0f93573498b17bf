"""Noise drawn ahead on a worker thread (`fedmirasol.privacy.noise_ahead`): every step releases
the noise a synchronous optimizer would, each draw is released at most once and never
reused, a draw made for other settings is discarded, and the worker stops on close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer
from privacy_fixtures import clips, sgd, tiny_model
from torch import nn

from fedmirasol.privacy.accountant_state import new_accountant
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_optimizer import LeanDPOptimizer
from fedmirasol.privacy.dp_training import SecureDPOptimizer, train_private
from fedmirasol.privacy.noise_ahead import NoiseAhead
from fedmirasol.privacy.secure_noise import SecureNoise

SIGMA, CLIP, BATCH = 1.3, 0.7, 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    # a weight of 5600 (clipped apart) beside small tensors (clipped side by side)
    return nn.Sequential(nn.Linear(80, 70), nn.Tanh(), nn.Linear(70, 3))


def _optimizer(kind: type[DPOptimizer], model: nn.Module, seed: int = 7, **extra) -> DPOptimizer:
    return kind(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=SIGMA,
                max_grad_norm=CLIP, expected_batch_size=BATCH, loss_reduction="mean",
                generator=torch.Generator().manual_seed(seed), **extra)


def _unrelated(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Two noise vectors share no draw: not equal and uncorrelated."""
    correlation = torch.corrcoef(torch.stack([first, second]))[0, 1]
    return not torch.equal(first, second) and abs(float(correlation)) < 0.1


def _released(optimizer: DPOptimizer, model: nn.Module, step: int, *, zero: bool = False):
    generator = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        rows = torch.randn((BATCH, *p.shape), generator=generator)
        p.grad_sample = torch.zeros_like(rows) if zero else rows
    assert optimizer.pre_step()
    released = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    return released


def _noise_of_steps(optimizer: DPOptimizer, model: nn.Module, steps: int) -> list[torch.Tensor]:
    """The releases of `steps` steps with zero gradients (the noise / B), flattened; closes."""
    try:
        return [torch.cat([g.flatten() for g in _released(optimizer, model, step, zero=True)])
                for step in range(steps)]
    finally:
        optimizer.close()


def test_each_step_releases_what_opacus_releases_from_the_same_generator() -> None:
    ours_model, opacus_model = _model(), _model()
    ours = _optimizer(LeanDPOptimizer, ours_model)
    opacus = _optimizer(DPOptimizer, opacus_model)
    assert ours._noise_ahead is not None
    try:
        for step in range(4):
            for mine, reference in zip(_released(ours, ours_model, step),
                                       _released(opacus, opacus_model, step)):
                torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    finally:
        ours.close()


def test_noise_is_fresh_every_step_and_each_draw_released_once() -> None:
    """With zero gradients the release is the noise / B: step k's noise is the k-th block of
    the generator's stream, so no block is skipped, repeated or handed out twice."""
    model = _model()
    releases = _noise_of_steps(_optimizer(LeanDPOptimizer, model), model, 3)
    stream = torch.Generator().manual_seed(7)
    for release in releases:
        expected = torch.cat([torch.normal(0, SIGMA * CLIP, size=p.shape, generator=stream)
                              .flatten() for p in model.parameters()]) / BATCH
        torch.testing.assert_close(release, expected, rtol=1e-6, atol=1e-7)
    for first in range(3):
        for second in range(first + 1, 3):
            assert _unrelated(releases[first], releases[second])


def test_noise_drawn_for_other_settings_is_discarded_never_released() -> None:
    model = _model()
    optimizer = _optimizer(LeanDPOptimizer, model)
    stream = torch.Generator().manual_seed(7)

    def draw(std: float) -> torch.Tensor:
        return torch.cat([torch.normal(0, std, size=p.shape, generator=stream).flatten()
                          for p in model.parameters()]) / BATCH

    try:
        first = torch.cat([g.flatten() for g in _released(optimizer, model, 0, zero=True)])
        optimizer.noise_multiplier = 2 * SIGMA  # e.g. a noise scheduler between two steps
        second = torch.cat([g.flatten() for g in _released(optimizer, model, 1, zero=True)])
    finally:
        optimizer.close()
    torch.testing.assert_close(first, draw(SIGMA * CLIP))
    discarded = draw(SIGMA * CLIP)  # drawn ahead at the old std, then dropped
    torch.testing.assert_close(second, draw(2 * SIGMA * CLIP))
    assert _unrelated(second, discarded)


def test_draws_never_overlap_and_close_stops_the_worker() -> None:
    running, most = [0], [0]
    lock = threading.Lock()

    def draw_one(entry: int, into: torch.Tensor | None) -> torch.Tensor:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return torch.full((1,), float(entry))

    def noise_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("dp-noise")}

    others = noise_threads()  # other tests' optimizers may still have theirs until collected
    ahead = NoiseAhead(draw_one)
    spec = list(range(20))
    lent: list[list[float]] = []

    def use(noise: list[torch.Tensor]) -> None:
        lent.append([float(t) for t in noise])

    for _ in range(3):
        ahead.lend(spec, use)
    ahead.lend(spec[:5], use)  # other settings: the pending draw of 20 is finished, then dropped
    assert lent == [[float(e) for e in spec]] * 3 + [[float(e) for e in spec[:5]]]
    assert most[0] == 1
    assert noise_threads() - others  # the worker ran
    ahead.close()
    assert not noise_threads() - others
    ahead.lend(spec[:2], use)  # usable again after close (draws synchronously)
    assert len(lent[-1]) == 2
    ahead.close()


def test_the_next_draw_starts_only_after_the_noise_was_used() -> None:
    """Refilled in place: while `use` runs, the tensors it was lent do not change."""
    generator = torch.Generator().manual_seed(0)

    def draw_one(entry: int, into: torch.Tensor | None) -> torch.Tensor:
        if into is None:
            return torch.randn(1000, generator=generator)
        return into.normal_(generator=generator)

    ahead = NoiseAhead(draw_one)
    seen = []

    def use(noise: list[torch.Tensor]) -> None:
        before = noise[0].clone()
        time.sleep(0.02)  # a worker refilling now would change it
        assert torch.equal(noise[0], before)
        seen.append(before)

    try:
        for _ in range(3):
            ahead.lend([0], use)
    finally:
        ahead.close()
    assert _unrelated(seen[0], seen[1]) and _unrelated(seen[1], seen[2])


def test_only_a_generator_of_its_own_is_used_ahead() -> None:
    """Torch's global generator also serves the model (dropout, init): never from a worker."""
    model = _model()
    shared = LeanDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0,
                             max_grad_norm=1.0, expected_batch_size=BATCH)
    assert shared._noise_ahead is None
    inline = _optimizer(LeanDPOptimizer, model, noise_ahead=False)
    assert inline._noise_ahead is None


def test_secure_noise_is_drawn_ahead_fresh_with_its_std() -> None:
    model = _model()
    optimizer = SecureDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                  noise=SecureNoise(), noise_multiplier=SIGMA,
                                  max_grad_norm=CLIP, expected_batch_size=BATCH)
    assert optimizer._noise_ahead is not None
    releases = _noise_of_steps(optimizer, model, 2)
    for release in releases:
        assert float(release.std() * BATCH) == pytest.approx(SIGMA * CLIP, rel=0.05)
    assert _unrelated(releases[0], releases[1])


@pytest.mark.parametrize("seeded", [True, False])
def test_training_leaves_no_worker_behind(seeded: bool) -> None:
    """`train_private` closes its optimizer: the draw ahead for a step never taken is dropped
    and the worker ends, with seeded torch noise and with the CSPRNG."""
    model = tiny_model()
    plan = SamplingPlan.for_round(4, 2, 1)
    generators = (dict(generator=torch.Generator().manual_seed(0),
                       noise_generator=torch.Generator().manual_seed(1)) if seeded else {})
    metrics = train_private(model, clips(4), sgd(model), accountant=new_accountant("rdp"),
                            plan=plan, epochs=1, noise_multiplier=1.0, max_grad_norm=1.0,
                            **generators)
    assert metrics["steps"] == plan.steps >= 2
    assert not any(t.name.startswith("dp-noise") for t in threading.enumerate())


def test_one_generator_cannot_serve_both_batches_and_noise() -> None:
    """The noise is drawn on a worker thread while the main thread draws batches: one shared
    torch generator would make both streams depend on thread timing."""
    model = tiny_model()
    shared = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="two generators"):
        train_private(model, clips(4), sgd(model), accountant=new_accountant("rdp"),
                      plan=SamplingPlan.for_round(4, 2, 1), epochs=1, noise_multiplier=1.0,
                      max_grad_norm=1.0, generator=shared, noise_generator=shared)


def test_secure_noise_drawn_from_two_threads_never_repeats_a_draw() -> None:
    """The CSPRNG serves the batch sampler (main thread) and the noise drawn ahead (worker) at
    once: numpy's generator locks its AES counter, so no output is handed out twice."""
    noise, drawn = SecureNoise(), {}

    def draw(name: str) -> None:
        drawn[name] = np.concatenate([noise.uniform(1000) for _ in range(200)])

    threads = [threading.Thread(target=draw, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both = np.concatenate([drawn["a"], drawn["b"]])
    assert len(np.unique(both)) == len(both) == 400_000
