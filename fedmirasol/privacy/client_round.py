"""A client's DP round, start to finish, over what it keeps in Flower's ``context.state``.

    private = PrivateRound.begin(context.state, settings, num_examples=len(train),
                                 batch_size=..., epochs=..., num_rounds=...)
    if not private.budget.allowed:
        reply with private.metrics() (dp-budget-exhausted = 1) and no training
    metrics = private.train(model, train, optimizer, extra_loss=..., device=..., seed=...)
    private.save(context.state)
    reply with private.metrics() merged into the train metrics

The accountant is restored from ``context.state`` every round (or started when there is none)
and saved back after training, so the epsilon a client reports covers every step it took.
In target mode the noise multiplier is calibrated once, before the first round, for the whole
planned run (every round, every local epoch) and kept in the state with the accountant; with a
fixed `privacy.noise-multiplier` every round uses the config's value (a resumed run may change
it, and the accountant composes the rounds' different sigmas).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from opacus.accountants import IAccountant
from torch import nn
from torch.utils.data import Dataset

from fedmirasol.privacy.accountant_state import (
    accountant_from_arrays,
    accountant_to_arrays,
    epsilon,
    new_accountant,
    total_steps,
)
from fedmirasol.privacy.budget import BudgetCheck, check_budget
from fedmirasol.privacy.calibration import SamplingPlan, calibrate_noise_multiplier
from fedmirasol.privacy.dp_training import ExtraLoss, train_private
from fedmirasol.config.privacy import PrivacyConfig as PrivacySettings

STATE_KEY = "privacy-accountant"  # ArrayRecord in context.state
NOISE_KEY = "noise-multiplier"  # the client's (calibrated) sigma, kept with the history

# Keys of the reply's MetricRecord (the server's ledger reads them back).
METRIC_PREFIX = "dp-"
EXHAUSTED = "dp-budget-exhausted"


def _load(state: RecordDict, settings: PrivacySettings) -> tuple[IAccountant, float | None]:
    if STATE_KEY not in state.array_records:
        return new_accountant(settings.accountant), None
    arrays = {name: array.numpy() for name, array in state.array_records[STATE_KEY].items()}
    accountant = accountant_from_arrays(arrays, expected=settings.accountant)
    sigma = float(arrays[NOISE_KEY][0]) if NOISE_KEY in arrays else None
    return accountant, sigma


@dataclass
class PrivateRound:
    settings: PrivacySettings
    accountant: IAccountant
    plan: SamplingPlan
    epochs: int
    noise_multiplier: float
    budget: BudgetCheck
    trained: bool = field(default=False)

    @classmethod
    def begin(cls, state: RecordDict, settings: PrivacySettings, *, num_examples: int,
              batch_size: int, epochs: int, num_rounds: int) -> "PrivateRound":
        """Restore the accountant, fix sigma (calibrating it on the first round in target
        mode) and check the round against the budget; nothing is trained or saved yet."""
        if not settings.enabled:
            raise ValueError("privacy.enabled is false: this client runs no DP round")
        accountant, sigma = _load(state, settings)
        plan = SamplingPlan.for_round(num_examples, batch_size, epochs, settings.sample_rate)
        if not settings.calibrated:  # the config's sigma, also when a resumed run changed it
            sigma = settings.noise_multiplier
        elif sigma is None:  # target mode: calibrated once, kept for the whole run
            sigma = calibrate_noise_multiplier(settings.target_epsilon, settings.delta,
                                               plan.sample_rate, plan.steps * num_rounds,
                                               settings.accountant)
        budget = check_budget(accountant, noise_multiplier=sigma, sample_rate=plan.sample_rate,
                              steps=plan.steps, delta=settings.delta, budget=settings.budget)
        return cls(settings, accountant, plan, epochs, sigma, budget)

    def train(self, model: nn.Module, dataset: Dataset, optimizer: torch.optim.Optimizer, *,
              extra_loss: ExtraLoss | None = None, device: torch.device | str = "cpu",
              seed: int | None = None) -> dict[str, float]:
        """Local DP-SGD for the planned round; refuses when the budget does not allow it.

        The Poisson batches and the noise are drawn from `seed` when one is given (tests,
        benchmarks) and otherwise from a secret seed: DP needs randomness the server cannot
        reproduce, so a run's public seed must not decide them.
        """
        if not self.budget.allowed:
            raise RuntimeError(f"privacy budget exhausted: epsilon {self.budget.spent:.4g} "
                               f"would reach {self.budget.projected:.4g} > {self.budget.budget}")
        if self.trained:
            raise RuntimeError("this PrivateRound has already trained; begin a new one")
        steps_before = total_steps(self.accountant)
        sampling_seed, noise_seed = ((seed, seed + 1) if seed is not None
                                     else (secrets.randbits(63), secrets.randbits(63)))
        metrics = train_private(
            model, dataset, optimizer, accountant=self.accountant, plan=self.plan,
            epochs=self.epochs, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            grad_sample_mode=self.settings.grad_sample_mode,
            max_physical_batch_size=self.settings.max_physical_batch_size,
            extra_loss=extra_loss, device=device,
            generator=torch.Generator().manual_seed(sampling_seed),
            noise_generator=torch.Generator(device=device).manual_seed(noise_seed),
        )
        self.trained = True
        taken = total_steps(self.accountant) - steps_before
        if taken != self.plan.steps:  # the budget check accounted exactly plan.steps
            raise RuntimeError(f"DP round took {taken} accounted steps, planned {self.plan.steps}")
        return metrics

    def save(self, state: RecordDict) -> None:
        """Store the accountant (with every step so far) and sigma in ``context.state``."""
        arrays = accountant_to_arrays(self.accountant)
        arrays[NOISE_KEY] = np.asarray([self.noise_multiplier], dtype=np.float64)
        state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})

    def metrics(self) -> dict[str, Any]:
        """Numbers for the reply's MetricRecord (and the server's ledger); dp-budget 0 = none."""
        return {
            "dp-epsilon": epsilon(self.accountant, self.settings.delta),
            "dp-delta": self.settings.delta,
            "dp-total-steps": total_steps(self.accountant),
            "dp-round-steps": self.plan.steps if self.trained else 0,
            "dp-sample-rate": self.plan.sample_rate,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-max-grad-norm": self.settings.max_grad_norm,
            "dp-budget": self.settings.budget if math.isfinite(self.settings.budget) else 0.0,
            EXHAUSTED: int(not self.budget.allowed),
        }


def budget_exhausted(metrics: dict[str, Any]) -> bool:
    """Whether a client's reply says its privacy budget is spent (the server drops it)."""
    return bool(metrics.get(EXHAUSTED, 0))
