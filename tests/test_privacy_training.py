"""A DP-SGD round: clean model afterwards, clipping bound, empty Poisson batches, FedProx,
frozen parameters, physical batch splitting, and the per-sample objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from privacy_fixtures import clips, sgd, snapshot, tiny_model

from fedmirasol.data.batch import collate
from fedmirasol.core.parameters import model_state
from fedmirasol.core.proximal import proximal_term
from fedmirasol.models import mirasol_loss
from fedmirasol.privacy.accountant_state import new_accountant, total_steps
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_training import train_private
from fedmirasol.privacy.objective import per_sample_loss


def dp_round(model, data, optimizer, *, batch_size, epochs=1, sigma=1.0, clip=1.0, seed=0,
             accountant=None, **kwargs):
    accountant = accountant if accountant is not None else new_accountant("rdp")
    plan = SamplingPlan.for_round(len(data), batch_size, epochs)
    metrics = train_private(model, data, optimizer, accountant=accountant, plan=plan,
                            epochs=epochs, noise_multiplier=sigma, max_grad_norm=clip,
                            generator=torch.Generator().manual_seed(seed), **kwargs)
    return metrics, accountant, plan


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.flatten() for p in params.values()])


def test_rounds_rewrap_the_same_model_and_leave_its_names_clean():
    model, data = tiny_model(), clips(8)
    names = list(model.state_dict())
    accountant = new_accountant("rdp")
    for server_round in range(3):  # no "Trying to add hooks twice"
        dp_round(model, data, sgd(model), batch_size=4, seed=server_round, accountant=accountant)
    assert list(model.state_dict()) == names
    assert not any(name.startswith("_module.") for name in model.state_dict())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert set(model_state(model, names)) == set(names)
    assert total_steps(accountant) == 3 * SamplingPlan.for_round(8, 4, 1).steps


def test_without_noise_a_step_moves_the_model_by_at_most_lr_times_the_clip_norm():
    model, data = tiny_model(), clips(4)
    before = snapshot(model)
    # q = 1: every example in the one batch; expected batch size = 4
    metrics, _, plan = dp_round(model, data, sgd(model, lr=1.0), batch_size=4, sigma=0.0,
                                clip=0.01)
    assert plan.sample_rate == 1.0 and metrics["steps"] == 1
    moved = float((flat(snapshot(model)) - flat(before)).norm())
    assert 0 < moved <= 0.01 * (1 + 1e-4)
    assert moved > 0.005  # the clipped per-sample gradients (norms >> 0.01) mostly agree


def test_empty_poisson_batches_release_noise_and_are_accounted():
    model, data = tiny_model(), clips(2)
    # q = 0.5 over 2 examples: a batch is empty with probability 1/4
    empty_seen = False
    for seed in range(10):
        before = snapshot(model)
        metrics, accountant, plan = dp_round(model, data, sgd(model), batch_size=1, epochs=1,
                                             seed=seed)
        assert total_steps(accountant) == plan.steps == metrics["steps"] == 2
        assert not torch.equal(flat(before), flat(snapshot(model)))
        if metrics["empty_steps"] > 0:
            empty_seen = True
            if metrics["empty_steps"] == 2:  # no example read, yet the model moved (noise)
                assert metrics["num_examples"] == 0
    assert empty_seen


def test_fedprox_term_is_added_after_the_noise():
    data = clips(4)
    plain_model, prox_model = tiny_model(), tiny_model()
    start = snapshot(plain_model)
    dp_round(plain_model, data, sgd(plain_model, lr=0.5), batch_size=4, sigma=0.0)
    anchor = {name: (value - 1.0).numpy() for name, value in start.items()}  # w - w_g = 1
    metrics, _, _ = dp_round(prox_model, data, sgd(prox_model, lr=0.5), batch_size=4, sigma=0.0,
                             extra_loss=proximal_term(0.2, anchor))
    # the proximal gradient mu * (w - w_g) = 0.2 everywhere, times lr 0.5
    difference = flat(snapshot(plain_model)) - flat(snapshot(prox_model))
    torch.testing.assert_close(difference, torch.full_like(difference, 0.1), atol=2e-5, rtol=0)
    assert metrics["loss_extra"] == pytest.approx(0.5 * 0.2 * difference.numel())


def test_frozen_parameters_stay_put_and_the_rest_trains():
    model, data = tiny_model(), clips(8)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    dp_round(model, data, sgd(model), batch_size=4)
    after = snapshot(model)
    for name in before:
        frozen = name.startswith("classifier.")
        assert torch.equal(before[name], after[name]) == frozen, name


def test_batch_memory_manager_splits_batches_into_the_same_logical_steps():
    model, data = tiny_model(), clips(8)
    metrics, accountant, plan = dp_round(model, data, sgd(model), batch_size=4, epochs=2,
                                         max_physical_batch_size=1)
    assert metrics["steps"] == plan.steps == total_steps(accountant) == 4


def test_functorch_mode_trains_too():
    model, data = tiny_model(), clips(4)
    before = snapshot(model)
    metrics, _, _ = dp_round(model, data, sgd(model), batch_size=2, grad_sample_mode="functorch")
    assert metrics["steps"] == 2 and not torch.equal(flat(before), flat(snapshot(model)))
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_per_sample_loss_is_the_batch_loss_when_every_sample_has_every_term():
    model, data = tiny_model(), clips(4)
    batch = collate([data[i] for i in range(4)])
    assert bool((batch["label"] >= 0).all())
    output = model(batch)
    losses = per_sample_loss(model, batch, output)
    assert losses.shape == (4,)
    total, _ = mirasol_loss(model, batch, output=output)
    torch.testing.assert_close(losses.mean(), total)
    # a sample's loss does not depend on the rest of the batch
    alone = per_sample_loss(model, {k: v[:1] for k, v in batch.items()},
                            model({k: v[:1] for k, v in batch.items()}))
    np.testing.assert_allclose(alone.detach().numpy(), losses[:1].detach().numpy(), rtol=1e-4)
