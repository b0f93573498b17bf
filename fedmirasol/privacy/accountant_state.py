"""Opacus accountants: a fresh one, its step count, its epsilon (never in the user's favour).

A client's accountant is rebuilt from its release log (`fedmirasol.privacy.release_log`)
through `IAccountant.load_state_dict()`, so it composes every step taken before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Opacus' accountants take about a second to import: only when one is made
    from opacus.accountants import IAccountant


def new_accountant(mechanism: str) -> IAccountant:
    """A fresh Opacus accountant ("rdp" or "prv")."""
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=mechanism)


def total_steps(accountant: IAccountant) -> int:
    return int(sum(steps for _, _, steps in accountant.history))


def epsilon(accountant: IAccountant, delta: float) -> float:
    """Cumulative epsilon at `delta` over the whole history (0 before any step).

    RDP: Opacus' optimal-order conversion; PRV: Opacus' upper bound (not the estimate).
    """
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta))
