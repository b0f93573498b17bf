"""Would planned releases take a client past an epsilon budget? Decided before it trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmirasol.privacy.accountant_state import epsilon
from fedmirasol.privacy.release_log import History, accountant_of

# the reply metric of a client whose budget is spent (it trained nothing, sends no update)
EXHAUSTED = "dp-budget-exhausted"


def budget_exhausted(metrics: dict[str, Any]) -> bool:
    """Whether a client's reply says its privacy budget is spent (the server drops it)."""
    return bool(metrics.get(EXHAUSTED, 0))


@dataclass(frozen=True)
class BudgetCheck:
    allowed: bool  # False: the releases would exceed the budget, so the client must not train
    spent: float  # epsilon so far
    projected: float  # epsilon after the planned releases
    budget: float


def check_budget(history: History, planned: History, *, delta: float, budget: float,
                 mechanism: str) -> BudgetCheck:
    """Epsilon of `history`, and of `history` composed with `planned`, against `budget`."""
    spent = epsilon(accountant_of(history, mechanism), delta)
    projected = epsilon(accountant_of(history + planned, mechanism), delta)
    return BudgetCheck(allowed=projected <= budget, spent=spent, projected=projected,
                       budget=budget)
