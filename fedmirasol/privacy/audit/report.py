"""An audit's outcome: audit.json in the run directory, and its section of the privacy report.

The file holds the lower bound (and the two-Gaussian estimate) beside the accountant's epsilon
for the same unit, the audit's size (m canaries, r guesses, v correct), its confidence and
delta, and every canary's score and secret bit: the bits leave the auditor only here, after
training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedmirasol.privacy.audit.gaussians import estimate
from fedmirasol.privacy.audit.one_run import audit, best_possible, guess_rules
from fedmirasol.privacy.report import epsilon_text

AUDIT_FILE = "audit.json"
FORMAT = "fedmirasol-audit-1"
NOT_FOR_USE = ("this run's model was trained with audit canaries (clips with random labels, "
               "or canary clients' random updates) and its data was chosen to be memorized: "
               "it is not for use")
LEVEL_TEXT = {"sample": "sample-level DP-SGD", "client": "client-level DP"}


def audit_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / AUDIT_FILE


def outcome(scores: Sequence[float], included: Sequence[bool], *, delta: float,
            confidence: float, guesses: int, accountant_epsilon: float | None
            ) -> dict[str, Any]:
    """The bound, the estimate and the accountant's epsilon beside them (JSON-able)."""
    bits = np.asarray(included, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    result = audit(values, bits, delta=delta, confidence=confidence, k=guesses)
    table: dict[str, Any] = result.to_json()
    # the most this audit could show: every guess right under its largest rule
    table["best-possible-lower-bound"] = max(
        best_possible(len(values), top + bottom, delta, confidence, result.rules_tried)
        for top, bottom in guess_rules(len(values), guesses))
    try:
        table.update(estimate(values[bits], values[~bits], delta).to_json())
    except ValueError as error:  # fewer than two canaries on a side, or no spread
        table.update({"epsilon-estimate": None, "estimate-problem": str(error)})
    table["accountant-epsilon"] = accountant_epsilon
    table["exceeds-accountant"] = (accountant_epsilon is not None
                                   and result.epsilon_lower_bound > accountant_epsilon)
    return table


def write(run_dir: str | Path, table: Mapping[str, Any]) -> Path:
    """audit.json (NaN refused; an infinite epsilon is written as null)."""
    path = audit_path(run_dir)
    clean = {key: (None if isinstance(value, float) and math.isinf(value) else value)
             for key, value in table.items()}
    path.write_text(json.dumps({"format": FORMAT, **clean}, indent=1, allow_nan=False,
                               sort_keys=True) + "\n")
    return path


def read(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's audit.json, or None when the run was not an audit."""
    path = audit_path(run_dir)
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    if table.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    return table


def headline(table: Mapping[str, Any]) -> dict[str, Any]:
    """audit.json without the per-canary rows (the privacy report's JSON)."""
    return {key: value for key, value in table.items()
            if key not in ("canaries", "participation", "format")}


def _bound_text(value: float) -> str:
    """A lower bound for people: rounded down, so it never claims more than was shown."""
    return f"{math.floor(value * 1000) / 1000:.3f}"


def format_section(table: Mapping[str, Any]) -> str:
    """The privacy report's lines about an audit."""
    level = LEVEL_TEXT.get(table["level"], table["level"])
    accountant = table.get("accountant-epsilon")
    lines = [
        f"empirical audit ({level}, unit: {table['unit']}, {table['observe']} observed, "
        f"{table['confidence'] * 100:g} % confidence, delta = {table['delta']:g}):",
        f"  epsilon >= {_bound_text(table['epsilon-lower-bound'])} (lower bound from "
        f"m = {table['m']} canaries, r = {table['r']} guesses, v = {table['v']} correct; "
        f"at most {_bound_text(table['best-possible-lower-bound'])} with every guess right)",
        "  accountant's epsilon: " + ("none (no DP for this unit)" if accountant is None
                                      else epsilon_text(accountant)),
    ]
    if table.get("canary-accountant-epsilon") is not None:
        lines.append("  accountant's epsilon for the canary clients' own sampling: "
                     + epsilon_text(table["canary-accountant-epsilon"]))
    if table.get("epsilon-estimate") is not None:
        lines.append(f"  estimate from two fitted Gaussians (not a bound): "
                     f"{table['epsilon-estimate']:.3g}")
    if table.get("exceeds-accountant"):
        lines.append("  THE LOWER BOUND EXCEEDS THE ACCOUNTANT'S EPSILON: the training leaks "
                     "more than it accounts for (a bug in the mechanism or its accounting)")
    lines.append(f"  {NOT_FOR_USE}")
    return "\n".join(lines)
