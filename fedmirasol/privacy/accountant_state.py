"""An Opacus accountant's state (its `state_dict()`: mechanism and history) as plain numpy
arrays, and back through `load_state_dict()`.

The arrays fit a Flower ``ArrayRecord`` in ``context.state`` (and the simulation's on-disk
mirror of it), so a client's accounting survives rounds and restarts: restoring gives an
accountant whose next steps compose with every step taken before.
"""

from __future__ import annotations

import numpy as np
from opacus.accountants import IAccountant, create_accountant

HISTORY = "history"  # float64 rows: (noise multiplier, sample rate, steps)
MECHANISM = "mechanism"  # uint8: the accountant's name ("rdp", "prv") as ASCII


def new_accountant(mechanism: str) -> IAccountant:
    """A fresh Opacus accountant ("rdp" or "prv")."""
    return create_accountant(mechanism=mechanism)


def accountant_to_arrays(accountant: IAccountant) -> dict[str, np.ndarray]:
    """The accountant's full history, exactly (float64 holds every sigma, q and step count)."""
    state = accountant.state_dict()
    rows = [(float(sigma), float(q), float(steps)) for sigma, q, steps in state["history"]]
    history = np.asarray(rows, dtype=np.float64).reshape(len(rows), 3)
    return {HISTORY: history,
            MECHANISM: np.frombuffer(state["mechanism"].encode("ascii"), dtype=np.uint8).copy()}


def accountant_from_arrays(arrays: dict[str, np.ndarray], expected: str | None = None) -> IAccountant:
    """Rebuild the accountant `accountant_to_arrays` saved; its history continues.

    `expected` (the run's configured accountant) must match the saved one: switching the
    analysis mid-run would silently change the reported epsilon.
    """
    if HISTORY not in arrays or MECHANISM not in arrays:
        raise ValueError(f"saved accountant lacks {HISTORY!r}/{MECHANISM!r}: got {sorted(arrays)}")
    mechanism = bytes(np.asarray(arrays[MECHANISM], dtype=np.uint8)).decode("ascii")
    if expected is not None and mechanism != expected:
        raise ValueError(f"the client's saved accountant is {mechanism!r} but the run config's "
                         f"privacy.accountant is {expected!r}")
    history = np.asarray(arrays[HISTORY], dtype=np.float64).reshape(-1, 3)
    accountant = new_accountant(mechanism)
    for sigma, q, steps in history:
        if steps != int(steps) or steps < 1 or not 0 < q <= 1 or sigma < 0:
            raise ValueError(f"saved accountant has an invalid entry {(sigma, q, steps)}")
    accountant.load_state_dict({"mechanism": mechanism, "history": [
        (float(sigma), float(q), int(steps)) for sigma, q, steps in history]})
    return accountant


def total_steps(accountant: IAccountant) -> int:
    return int(sum(steps for _, _, steps in accountant.history))


def epsilon(accountant: IAccountant, delta: float) -> float:
    """Cumulative epsilon at `delta` over the whole history (0 before any step).

    RDP: Opacus' optimal-order conversion; PRV: Opacus' upper bound (not the estimate).
    """
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta))
