"""Would a client's next round take it past its epsilon budget? Decided before it trains."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from opacus.accountants import IAccountant

from fedmirasol.privacy.accountant_state import epsilon


@dataclass(frozen=True)
class BudgetCheck:
    allowed: bool  # False: the round would exceed the budget, so the client must not train
    spent: float  # epsilon so far
    projected: float  # epsilon after the planned round
    budget: float


def check_budget(accountant: IAccountant, *, noise_multiplier: float, sample_rate: float,
                 steps: int, delta: float, budget: float) -> BudgetCheck:
    """Account the planned steps on a copy of `accountant` (left untouched) against `budget`."""
    projected_accountant = copy.deepcopy(accountant)
    for _ in range(steps):
        projected_accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    spent = epsilon(accountant, delta)
    projected = epsilon(projected_accountant, delta)
    return BudgetCheck(allowed=projected <= budget, spent=spent, projected=projected,
                       budget=budget)
