"""PNG of each client's cumulative epsilon over the rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedmirasol.runs.plots import (  # noqa: E402
    MAX_CLIENT_LINES, legend_outside, plot_clients, round_axis)

PLOT_FILE = "privacy-epsilon.png"


def plot_epsilon(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Plot epsilon per round for every client (and the client-level epsilon, if any)."""
    clients: dict[int, list[tuple[int, float]]] = {}
    level: list[tuple[int, float]] = []
    budgets = set()
    for record in records:
        if record["kind"] == "client":
            clients.setdefault(record["partition-id"], []).append((record["round"],
                                                                    record["epsilon"]))
            if record.get("budget") is not None:
                budgets.add(record["budget"])
        elif record["kind"] == "client-level":
            level.append((record["round"], record["epsilon"]))
    if not clients and not level:
        raise ValueError("the privacy ledger holds no records to plot")
    figure, axis = plt.subplots(figsize=(8, 4.5))
    # Up to MAX_CLIENT_LINES clients one line each; more: the median and interquartile band,
    # with the clients that spent the most named.
    plot_clients(axis, {pid: clients[pid] for pid in sorted(clients)}, higher_is_worse=True,
                 value="epsilon")
    if level:
        points = sorted(level)
        axis.plot([p[0] for p in points], [p[1] for p in points], "k--", label="client-level")
    for budget in sorted(budgets):
        axis.axhline(budget, color="red", linestyle=":", label=f"budget {budget:g}")
    round_axis(axis)
    axis.set_ylabel("cumulative epsilon")
    axis.set_title("Privacy spent per client" + (
        "" if len(clients) <= MAX_CLIENT_LINES else f" (median and spread of {len(clients)})"))
    legend_outside(axis, fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")  # keeps the legend outside the axes
    plt.close(figure)
    return path
