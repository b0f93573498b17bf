"""The privacy report of a run: per client epsilon-delta, steps and budget; the run's worst."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from fedmirasol.privacy import ledger


def client_summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per client: what it spent, from its latest ledger record."""
    by_client: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["kind"] in ledger.CLIENT_KINDS:
            by_client.setdefault(record["partition-id"], []).append(record)
    rows = []
    for pid in sorted(by_client):
        history = sorted(by_client[pid], key=lambda r: (r["round"], r["total-steps"]))
        latest = max(history, key=lambda r: (r["total-steps"], r["epsilon"]))
        last = history[-1]
        budget = last.get("budget")
        spent = max(r["epsilon"] for r in history)
        rows.append({
            "partition-id": pid,
            "rounds": sum(1 for r in history if r["kind"] == "client" and r["trained"]),
            "total-steps": latest["total-steps"],
            "noise-multiplier": last["noise-multiplier"],
            "sample-rate": last["sample-rate"],
            "epsilon": spent,
            "delta": last["delta"],
            "unit": last.get("unit", "clip"),
            "accountant": last["accountant"],
            "history": latest.get("history"),
            "lifetime-epsilon": max((r.get("lifetime-epsilon") or 0.0) for r in history),
            "lifetime-delta": last.get("lifetime-delta"),
            "budget": budget,
            "budget-left": None if budget is None else budget - spent,
            "budget-exhausted": any(r["budget-exhausted"] for r in history),
        })
    return rows


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The report as JSON-able data: clients, the worst client, client-level epsilon."""
    records = ledger.read(run_dir)
    clients = client_summaries(records)
    worst = max(clients, key=lambda row: row["epsilon"]) if clients else None
    client_level = [r for r in records if r["kind"] == "client-level"]
    return {
        "clients": clients,
        "worst-client": None if worst is None else {
            "partition-id": worst["partition-id"], "epsilon": worst["epsilon"],
            "delta": worst["delta"]},
        "client-level": None if not client_level else {
            **{key: client_level[-1][key] for key in
               ("epsilon", "delta", "noise-multiplier", "clip-norm", "sample-rate", "round",
                "accountant")},
            "unit": "client", "releases": sum(
                1 for r in ledger.read_all(run_dir) if r["kind"] == "client-level")},
        "unit": _unit_text(clients, client_level),
    }


UNIT_TEXT = {"clip": "one training clip (one manifest row) of a client",
             "user": "one user (all clips sharing a manifest user/video) of a client",
             "client": "one client's whole contribution"}


def _unit_text(clients: list[dict[str, Any]], client_level: list[dict[str, Any]]) -> str:
    """What one epsilon protects, in words."""
    units = sorted({c["unit"] for c in clients})
    parts = [f"sample-level DP protects {UNIT_TEXT[u]}" for u in units]
    if client_level:
        parts.append(f"client-level DP protects {UNIT_TEXT['client']}")
    return "; ".join(parts)


def _significant(value: float, rounding: str, digits: int = 4) -> str:
    """`value` to `digits` significant digits, rounded in the given direction."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    exact = Decimal(repr(value))
    step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
    return f"{exact.quantize(step, rounding=rounding):f}"


def epsilon_text(value: float) -> str:
    """Epsilon for people: rounded up, so a printed epsilon is never below the real one."""
    return _significant(value, ROUND_CEILING)


def budget_left_text(value: float) -> str:
    """Remaining budget for people: rounded down, never above the real one."""
    return _significant(value, ROUND_FLOOR)


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of `run_summary`."""
    header = ("client", "unit", "rounds", "steps", "sigma", "q", "epsilon", "delta",
              "budget left")
    rows = [(str(c["partition-id"]), c["unit"], str(c["rounds"]), str(c["total-steps"]),
             _cell(c["noise-multiplier"]), _cell(c["sample-rate"]), epsilon_text(c["epsilon"]),
             _cell(c["delta"], 2),
             "exhausted" if c["budget-exhausted"]
             else "-" if c["budget-left"] is None else budget_left_text(c["budget-left"]))
            for c in summary["clients"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    worst = summary["worst-client"]
    if worst is not None:
        lines.append(f"worst client: {worst['partition-id']} at epsilon "
                     f"{epsilon_text(worst['epsilon'])} (delta = {worst['delta']:g})")
    level = summary["client-level"]
    if level is not None:
        lines.append(f"client-level DP: epsilon {epsilon_text(level['epsilon'])} at delta "
                     f"{level['delta']:g} after round {level['round']}")
    if summary.get("unit"):
        lines.append(f"unit of privacy: {summary['unit']}")
    return "\n".join(lines)


def worst_client_line(run_dir: str | Path) -> str | None:
    """One line for the end-of-run summary of `fedmirasol simulate` (None without a ledger)."""
    if not ledger.ledger_path(run_dir).is_file():
        return None
    summary = run_summary(run_dir)
    worst = summary["worst-client"]
    if worst is None:
        return None
    line = (f"privacy: worst client {worst['partition-id']} at epsilon {epsilon_text(worst['epsilon'])}, "
            f"delta = {worst['delta']:g}")
    if summary["client-level"] is not None:
        line += f"; client-level epsilon {epsilon_text(summary['client-level']['epsilon'])}"
    return line
