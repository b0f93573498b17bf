"""A client's DP work in one round (training, or evaluation), over its release log.

    private = PrivateRound.begin(log, request, site, run=..., server_round=..., phase="train",
                                 sample_rate=q, spend=RoundSpend(steps=...), per_round=...,
                                 num_rounds=...)
    if not private.allowed:
        reply with private.metrics() (dp-budget-exhausted = 1) and nothing trained
    private.charge()                 # written to the log before anything is released
    private.train(model, train, optimizer, epochs=...)      # DP-SGD passes (any number)
    figures = private.release_losses(model, train, ...)     # DP loss figures
    private.finish()                 # every charged release was made, no more
    reply with private.metrics() and the noised figures

Every release is charged before it is made (`ReleaseLog`), so the epsilon a client reports
covers every release it made, whatever crashed when. The per-run epsilon composes this run's
lines at the run's delta against the run's budget (the server's, capped by the site's
``privacy.max-epsilon``); the lifetime epsilon composes every line of the site's dataset at
the site's ``privacy.max-delta`` against ``privacy.lifetime-epsilon``. In target mode the
noise multiplier is calibrated once per run, before its first round, for the whole planned
run (every round's DP-SGD steps, DP loss figures, adaptation and DP evaluations), and kept in
the log; with a fixed `privacy.noise-multiplier` every round uses the config's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from fedmirasol.config.privacy import PrivacyConfig, SitePrivacyConfig
from fedmirasol.errors import ConfigError
from fedmirasol.privacy.accountant_state import epsilon, new_accountant, total_steps
from fedmirasol.privacy.budget import EXHAUSTED, BudgetCheck, check_budget
from fedmirasol.privacy.calibration import SamplingPlan, calibrate_noise_multiplier
from fedmirasol.privacy.dp_metrics import loss_bounds, loss_sums, noised_sums
from fedmirasol.privacy.dp_training import ExtraLoss, SecurePoissonSampler, train_private
from fedmirasol.privacy.release_log import (
    Charge, History, ReleaseLog, accountant_of, flatten, history_steps,
)
from fedmirasol.privacy.secure_noise import SecureNoise
from fedmirasol.privacy.site_policy import (
    check_calibrated, check_request, lifetime_budget, run_budget,
)

# Keys of the reply's MetricRecord (the server's ledger reads them back).
METRIC_PREFIX = "dp-"


@dataclass(frozen=True)
class RoundSpend:
    """What one piece of a round releases, before its noise multiplier is known."""

    steps: int = 0  # DP-SGD steps and DP loss figures, at (sigma, q)
    evaluations: int = 0  # DP evaluations of the validation split, at (eval sigma, rate 1)

    def __add__(self, other: "RoundSpend") -> "RoundSpend":
        return RoundSpend(self.steps + other.steps, self.evaluations + other.evaluations)


def sampling_plan(settings: PrivacyConfig, num_units: int, batch_size: int) -> SamplingPlan:
    """q for one epoch of the client's units (clips, or users under privacy.unit = "user")."""
    return SamplingPlan.for_round(num_units, batch_size, 1, settings.sample_rate)


def _noise_multiplier(log: ReleaseLog, settings: PrivacyConfig, site: SitePrivacyConfig, *,
                      run: str, sample_rate: float, per_round: RoundSpend,
                      num_rounds: int) -> float:
    if not settings.calibrated:  # the config's sigma, also when a resumed run changed it
        return settings.noise_multiplier
    sigma = log.calibrated(run)
    if sigma is None:  # target mode: calibrated once, kept for the whole run
        evaluations = per_round.evaluations * num_rounds
        sigma = calibrate_noise_multiplier(
            settings.target_epsilon, settings.delta, sample_rate,
            max(1, per_round.steps * num_rounds), settings.accountant,
            fixed=[(settings.eval_noise_multiplier, 1.0, evaluations)] if evaluations else ())
        check_calibrated(sigma, settings, site)
        log.record_calibration(run, sigma)
    return sigma


@dataclass
class PrivateRound:
    settings: PrivacyConfig
    site: SitePrivacyConfig
    log: ReleaseLog
    run: str
    server_round: int
    phase: str
    sample_rate: float
    noise_multiplier: float
    spend: RoundSpend
    budget: BudgetCheck  # this run's
    lifetime: BudgetCheck  # the site's dataset's, over all runs
    groups: Sequence[int] | None = None  # a user id per training example (unit = "user")
    noise: SecureNoise = field(default_factory=SecureNoise)
    taken: RoundSpend = RoundSpend()
    charged: bool = False

    @classmethod
    def begin(cls, log: ReleaseLog, settings: PrivacyConfig, site: SitePrivacyConfig, *,
              run: str, server_round: int, phase: str, sample_rate: float, spend: RoundSpend,
              per_round: RoundSpend, num_rounds: int,
              groups: Sequence[int] | None = None) -> "PrivateRound":
        """Check the request against the site, fix sigma and check the planned releases
        against both budgets; nothing is charged, trained or released yet."""
        if not settings.enabled:
            raise ValueError("privacy.enabled is false: this client runs no DP round")
        check_request(settings, site)
        if log.units() - {settings.unit}:
            raise ConfigError(f"this site's dataset {site.dataset_id!r} was accounted per "
                              f"{sorted(log.units())[0]}, the run asks privacy.unit = "
                              f"{settings.unit!r}: epsilons of different units do not compose "
                              "(use another privacy.dataset-id)")
        sigma = _noise_multiplier(log, settings, site, run=run, sample_rate=sample_rate,
                                  per_round=per_round, num_rounds=num_rounds)
        planned = [(c.noise_multiplier, c.sample_rate, c.steps)
                   for c in _charges(phase, sigma, sample_rate, spend, settings) if c.steps]
        budget = check_budget(log.history(run), planned, delta=settings.delta,
                              budget=run_budget(settings, site), mechanism=settings.accountant)
        lifetime = check_budget(log.history(), planned, delta=site.max_delta,
                                budget=lifetime_budget(site),
                                mechanism=site.accountant or settings.accountant)
        return cls(settings, site, log, run, server_round, phase, sample_rate, sigma, spend,
                   budget, lifetime, groups)

    @property
    def allowed(self) -> bool:
        return self.budget.allowed and self.lifetime.allowed

    def charge(self) -> None:
        """Write this round's releases to the log; only then may they be made."""
        if not self.allowed:
            raise RuntimeError(f"privacy budget exhausted: epsilon {self.budget.spent:.4g} "
                               f"would reach {self.budget.projected:.4g} (budget "
                               f"{self.budget.budget}); lifetime {self.lifetime.projected:.4g} "
                               f"of {self.lifetime.budget}")
        if self.charged:
            raise RuntimeError("this PrivateRound is charged already; begin a new one")
        self.log.charge(self.run, self.server_round, self.settings.unit,
                        _charges(self.phase, self.noise_multiplier, self.sample_rate,
                                 self.spend, self.settings))
        self.charged = True

    def _take(self, spend: RoundSpend) -> None:
        if not self.charged:
            raise RuntimeError("a DP release before its charge is written")
        taken = self.taken + spend
        if taken.steps > self.spend.steps or taken.evaluations > self.spend.evaluations:
            raise RuntimeError(f"DP round releases more than it charged ({taken} > "
                               f"{self.spend})")
        self.taken = taken

    def train(self, model: nn.Module, dataset: Dataset, optimizer: torch.optim.Optimizer, *,
              epochs: int = 1, steps: int | None = None, extra_loss: ExtraLoss | None = None,
              device: torch.device | str = "cpu", seed: int | None = None) -> dict[str, float]:
        """`epochs` passes (or `steps` steps) of DP-SGD, within what was charged. `seed` (tests,
        benchmarks) makes the batches and noise repeatable; otherwise they come from a CSPRNG."""
        plan = SamplingPlan(self.sample_rate, epochs * int(1 / self.sample_rate))
        planned = plan.steps if steps is None else steps
        self._take(RoundSpend(steps=planned))
        counter = new_accountant("rdp")  # counts the steps taken (the log holds the charge)
        generators = ({} if seed is None else dict(
            generator=torch.Generator().manual_seed(seed),
            noise_generator=torch.Generator(device=device).manual_seed(seed + 1)))
        metrics = train_private(
            model, dataset, optimizer, accountant=counter, plan=plan, epochs=epochs,
            steps=steps, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            grad_sample_mode=self.settings.grad_sample_mode,
            max_physical_batch_size=self.settings.max_physical_batch_size,
            extra_loss=extra_loss, device=device, groups=self.groups,
            clips_per_user=self.settings.clips_per_user, noise=self.noise, **generators)
        if total_steps(counter) != planned:
            raise RuntimeError(f"DP pass took {total_steps(counter)} steps, planned {planned}")
        return metrics

    def release_losses(self, model: nn.Module, dataset: Dataset, batch_size: int,
                       device: torch.device | str = "cpu") -> dict[str, float]:
        """Noised sum of clipped losses and noised count over one more Poisson batch (of
        users: each user's mean over at most clips-per-user clips), one charged step."""
        self._take(RoundSpend(steps=1))
        bound = self.settings.metric_loss_bound
        sampler = SecurePoissonSampler(len(dataset), self.sample_rate, noise=self.noise,
                                       groups=self.groups,
                                       clips_per_user=self.settings.clips_per_user)
        chosen = sampler.draw()
        if self.groups is None:
            sums = loss_sums(model, Subset(dataset, chosen), bound, batch_size, device)
        else:
            sums = {"dp-loss-sum": 0.0, "dp-count": 0.0}
            users = np.asarray(self.groups)[chosen]
            for user in np.unique(users):
                mine = [i for i, u in zip(chosen, users) if u == user]
                one = loss_sums(model, Subset(dataset, mine), bound, batch_size, device)
                sums["dp-loss-sum"] += one["dp-loss-sum"] / one["dp-count"]
                sums["dp-count"] += 1.0
        return noised_sums(sums, loss_bounds(bound), self.noise_multiplier, self.noise)

    def release_evaluation(self, sums: Mapping[str, float],
                           bounds: Mapping[str, float]) -> dict[str, float]:
        """One DP release of evaluation sums over the whole validation split (rate 1)."""
        self._take(RoundSpend(evaluations=1))
        return noised_sums(sums, bounds, self.settings.eval_noise_multiplier, self.noise)

    def finish(self) -> None:
        """Every release that was charged was made (a shortfall means a bug, not privacy)."""
        if self.taken != self.spend:
            raise RuntimeError(f"DP round charged {self.spend} but released {self.taken}")

    def metrics(self) -> dict[str, Any]:
        """Public bookkeeping for the reply's MetricRecord (and the server's ledger)."""
        settings, site = self.settings, self.site
        history: History = self.log.history(self.run)
        budget = run_budget(settings, site)
        return {
            "dp-epsilon": epsilon(accountant_of(history, settings.accountant), settings.delta),
            "dp-delta": settings.delta,
            "dp-total-steps": history_steps(history),
            "dp-round-steps": self.spend.steps + self.spend.evaluations if self.charged else 0,
            "dp-sample-rate": self.sample_rate,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-max-grad-norm": settings.max_grad_norm,
            "dp-budget": budget if math.isfinite(budget) else 0.0,
            "dp-history": flatten(history),
            "dp-user-level": int(settings.unit == "user"),
            "dp-lifetime-epsilon": epsilon(
                accountant_of(self.log.history(), site.accountant or settings.accountant),
                site.max_delta),
            "dp-lifetime-delta": site.max_delta,
            EXHAUSTED: int(not self.allowed),
        }


def _charges(phase: str, sigma: float, sample_rate: float, spend: RoundSpend,
             settings: PrivacyConfig) -> list[Charge]:
    return [Charge(phase, sigma, sample_rate, spend.steps),
            Charge(f"{phase}-evaluation", settings.eval_noise_multiplier, 1.0,
                   spend.evaluations)]
