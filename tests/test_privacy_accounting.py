"""Reported epsilon against independent analyses; the accountant never resets; budgets hold."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.rdp import RDPAccountant

from fedmirasol.client import state as client_state
from fedmirasol.privacy import ledger
from fedmirasol.privacy.accountant_state import epsilon, new_accountant
from fedmirasol.privacy.budget import check_budget
from fedmirasol.privacy.calibration import (
    SamplingPlan,
    calibrate_noise_multiplier,
    planned_epsilon,
)
from fedmirasol.privacy.budget import EXHAUSTED
from fedmirasol.privacy.client_round import PrivateRound, RoundSpend
from fedmirasol.privacy.release_log import Charge, ReleaseLog, accountant_of
from fedmirasol.config.privacy import PrivacyConfig as PrivacySettings
from fedmirasol.config.privacy import SitePrivacyConfig
from privacy_fixtures import clips, sgd, snapshot, tiny_model

DELTA = 1e-5


def opacus_analysis_epsilon(q: float, sigma: float, steps: int, delta: float = DELTA) -> float:
    """Opacus' RDP analysis functions called directly (not through any accountant)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    return float(opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def google_rdp_epsilon(q: float, sigma: float, steps: int, delta: float = DELTA) -> float:
    """Google's dp-accounting: Poisson-subsampled Gaussian, RDP."""
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def google_pld_epsilon(q: float, sigma: float, steps: int, delta: float = DELTA) -> float:
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def settings(**changes) -> PrivacySettings:
    values = dict(enabled=True, noise_multiplier=1.1, max_grad_norm=1.0, delta=DELTA)
    values.update(changes)
    return PrivacySettings(**values)


def begin(state: RecordDict, config: PrivacySettings, *, examples: int = 12,
          batch_size: int = 4, epochs: int = 1, rounds: int = 3) -> PrivateRound:
    """A DP-SGD round of `epochs` over `examples` clips (no loss figures), on `state`'s log."""
    plan = SamplingPlan.for_round(examples, batch_size, epochs)
    spend = RoundSpend(steps=plan.steps)
    return PrivateRound.begin(ReleaseLog.in_state(state), config, SitePrivacyConfig(), run="run",
                              server_round=1, phase="train", sample_rate=plan.sample_rate,
                              spend=spend, per_round=spend, num_rounds=rounds)


def run_round(state: RecordDict, config: PrivacySettings, model, *, rounds: int = 3,
              seed: int = 0) -> PrivateRound:
    private = begin(state, config, rounds=rounds)
    if private.allowed:
        private.charge()
        private.train(model, clips(12), sgd(model), seed=seed)
        private.finish()
    return private


def test_reported_epsilon_covers_every_round_and_matches_independent_analyses():
    state, model = RecordDict(), tiny_model()
    reported = []
    for server_round in range(1, 4):
        private = run_round(state, settings(), model, seed=server_round)
        reported.append(private.metrics())
    plan = SamplingPlan.for_round(12, 4, 1)
    for r, metrics in enumerate(reported, 1):
        assert metrics["dp-total-steps"] == r * plan.steps
        expected = opacus_analysis_epsilon(plan.sample_rate, 1.1, r * plan.steps)
        assert metrics["dp-epsilon"] == pytest.approx(expected, rel=0.01)
        google = google_rdp_epsilon(plan.sample_rate, 1.1, r * plan.steps)
        assert metrics["dp-epsilon"] == pytest.approx(google, rel=0.01)
    epsilons = [m["dp-epsilon"] for m in reported]
    assert epsilons[0] < epsilons[1] < epsilons[2]  # cumulative, never reset
    record = ledger.client_record(3, 0, dict(MetricRecord(reported[-1])), "rdp")  # via Flower
    assert record["epsilon"] == epsilons[-1] and record["total-steps"] == 3 * plan.steps


def test_prv_epsilon_is_an_upper_bound_close_to_googles_pld():
    accountant = new_accountant("prv")
    for _ in range(200):
        accountant.step(noise_multiplier=1.0, sample_rate=0.05)
    reported = epsilon(accountant, DELTA)
    pld = google_pld_epsilon(0.05, 1.0, 200)
    assert pld <= reported <= pld * 1.01 + 0.02
    assert reported < google_rdp_epsilon(0.05, 1.0, 200)  # PRV is tighter than RDP


def test_a_restarted_client_continues_from_its_release_log(tmp_path):
    """The log on disk is what a restarted process (empty state) reads: the history goes on."""
    model = tiny_model()
    on_disk = tmp_path / "privacy" / "default.jsonl"
    plan = SamplingPlan.for_round(12, 4, 1)
    for seed in (1, 2):  # two processes, one round each
        log = ReleaseLog.on_disk(on_disk)
        spend = RoundSpend(steps=plan.steps)
        private = PrivateRound.begin(log, settings(), SitePrivacyConfig(), run="run",
                                     server_round=seed, phase="train",
                                     sample_rate=plan.sample_rate, spend=spend, per_round=spend,
                                     num_rounds=3)
        private.charge()
        private.train(model, clips(12), sgd(model), seed=seed)
        private.finish()
    assert private.metrics()["dp-total-steps"] == 2 * plan.steps
    assert private.metrics()["dp-epsilon"] == pytest.approx(
        opacus_analysis_epsilon(plan.sample_rate, 1.1, 2 * plan.steps), rel=0.01)


def test_the_log_keeps_every_charge_and_merges_them_into_the_history(tmp_path):
    log = ReleaseLog.on_disk(tmp_path / "log.jsonl")
    log.charge("a", 1, "clip", [Charge("train", 1.3, 0.1, 7), Charge("evaluate", 5.0, 1.0, 1)])
    log.charge("b", 1, "clip", [Charge("train", 1.3, 0.1, 3)])
    again = ReleaseLog.on_disk(tmp_path / "log.jsonl")
    assert again.history("a") == [(1.3, 0.1, 7), (5.0, 1.0, 1)]
    assert again.history() == [(1.3, 0.1, 10), (5.0, 1.0, 1)]
    reference = new_accountant("rdp")
    reference.history = [(1.3, 0.1, 10), (5.0, 1.0, 1)]
    assert epsilon(accountant_of(again.history(), "rdp"), DELTA) == epsilon(reference, DELTA)


def test_a_client_at_its_budget_does_not_train():
    state, model = RecordDict(), tiny_model()
    first = run_round(state, settings(), model)
    spent = first.metrics()["dp-epsilon"]
    capped = settings(budget_epsilon=spent * 1.2)  # one more round would pass 1.2x (it adds ~30%)
    before = snapshot(model)
    private = run_round(state, capped, model)
    assert not private.allowed
    assert private.budget.projected > capped.budget_epsilon >= private.budget.spent
    assert private.metrics()[EXHAUSTED] == 1
    assert private.metrics()["dp-round-steps"] == 0
    assert private.metrics()["dp-epsilon"] == pytest.approx(spent)  # nothing accounted
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(RuntimeError, match="budget exhausted"):
        private.charge()
    with pytest.raises(RuntimeError, match="before its charge"):
        private.train(model, clips(12), sgd(model))


def test_budget_check_composes_the_planned_releases():
    history = [(1.0, 0.1, 10)]
    check = check_budget(history, [(1.0, 0.1, 10)], delta=DELTA, budget=100.0, mechanism="rdp")
    assert history == [(1.0, 0.1, 10)]
    assert check.allowed and check.spent < check.projected
    assert check.projected == pytest.approx(opacus_analysis_epsilon(0.1, 1.0, 20))


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_calibrated_sigma_ends_the_run_at_or_under_the_target(mechanism):
    target, q, steps = 8.0, 0.1, 100
    with warnings.catch_warnings():
        # Opacus' search for sigma also evaluates sigmas far above the answer (epsilon << 1),
        # where the best RDP order is the largest alpha; it warns there, and discards them.
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha", UserWarning)
        sigma = calibrate_noise_multiplier(target, DELTA, q, steps, mechanism)
    with warnings.catch_warnings():
        # at the sigma returned the bound is tight: its best order lies inside the alpha range
        warnings.filterwarnings("error", "Optimal order is the largest alpha", UserWarning)
        achieved = planned_epsilon(sigma, q, steps, DELTA, mechanism)
    assert achieved <= target
    assert achieved >= target - 0.1  # not needlessly noisy
    if mechanism == "rdp":
        assert opacus_analysis_epsilon(q, sigma, steps) <= target


def test_target_mode_clients_spend_at_most_the_target_and_stop_there():
    config = settings(target_epsilon=3.0)
    state = RecordDict()
    data_size, batch_size, rounds = 40, 8, 4
    plan = SamplingPlan.for_round(data_size, batch_size, 2)
    for _ in range(rounds):  # the planned run, charged without training
        private = begin(state, config, examples=data_size, batch_size=batch_size, epochs=2,
                        rounds=rounds)
        assert private.allowed
        private.charge()
    final = private.metrics()["dp-epsilon"]
    assert final <= 3.0
    assert final == pytest.approx(opacus_analysis_epsilon(plan.sample_rate,
                                                          private.noise_multiplier,
                                                          rounds * plan.steps), rel=0.01)
    extra = begin(state, config, examples=data_size, batch_size=batch_size, epochs=2,
                  rounds=rounds)
    assert not extra.allowed  # a round beyond the plan would pass the target


def privacy_from(table: dict) -> PrivacySettings:
    """The [privacy] section parsed from a table as a run config file holds it."""
    from fedmirasol.config import from_table

    return from_table({"privacy": table}).privacy


def test_settings_name_the_bad_key():
    with pytest.raises(KeyError, match="privacy.noise-multipler"):
        privacy_from({"noise-multipler": 1.0})
    with pytest.raises(ValueError, match="privacy.accountant"):
        privacy_from({"accountant": "gdp"})
    with pytest.raises(ValueError, match="privacy.delta"):
        privacy_from({"delta": 1.5})
    with pytest.raises(ValueError, match="privacy.max-grad-norm"):
        privacy_from({"max-grad-norm": "1"})
    with pytest.raises(ValueError, match="privacy.budget-epsilon"):
        privacy_from({"target-epsilon": 8.0, "budget-epsilon": 4.0})
    assert math.isinf(PrivacySettings().budget)
    assert PrivacySettings(target_epsilon=8.0).budget == 8.0
    assert privacy_from({}).enabled is False


def test_a_changed_fixed_noise_multiplier_applies_and_the_history_composes():
    """A resumed run with another privacy.noise-multiplier uses it; the epsilon covers both."""
    state, model = RecordDict(), tiny_model()
    run_round(state, settings(noise_multiplier=1.1), model, seed=1)
    private = run_round(state, settings(noise_multiplier=2.0), model, seed=2)
    assert private.metrics()["dp-noise-multiplier"] == 2.0
    plan = SamplingPlan.for_round(12, 4, 1)
    accountant = dp_accounting.rdp.RdpAccountant()
    for sigma in (1.1, 2.0):
        event = dp_accounting.PoissonSampledDpEvent(plan.sample_rate,
                                                    dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, plan.steps)
    expected = accountant.get_epsilon(DELTA)
    assert private.metrics()["dp-epsilon"] == pytest.approx(expected, rel=0.01)
    assert private.metrics()["dp-epsilon"] > run_round(RecordDict(), settings(noise_multiplier=2.0),
                                                       model, seed=3).metrics()["dp-epsilon"]
