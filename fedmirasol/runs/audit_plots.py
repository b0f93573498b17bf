"""PNG of an audit's canary scores: included against excluded canaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedmirasol.runs.plots import PLOT_DIR, legend_outside, save_figure  # noqa: E402

PLOT_FILE = "audit-scores.png"
SCORE_TEXT = {"updates": "its share of its client's updates (least squares over the canaries' "
                         "descent directions)",
              "final-model": "log p(label) under the final model less under the initial one",
              "cosine": "cosine of the canary's update with the final model's change"}


def plot_audit(table: Mapping[str, Any], run_dir: str | Path) -> Path:
    """Histograms of the canaries' scores by their secret bit, with the guessing thresholds."""
    scores = np.array([c["score"] for c in table["canaries"]], dtype=np.float64)
    bits = np.array([c["included"] for c in table["canaries"]], dtype=bool)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 5)))
    axis.hist(scores[bits], bins=bins, alpha=0.6, color="C3",
              label=f"included ({int(bits.sum())})")
    axis.hist(scores[~bits], bins=bins, alpha=0.6, color="C0",
              label=f"excluded ({int((~bits).sum())})")
    order = np.sort(scores)
    if table["guessed-included"]:
        axis.axvline(order[-table["guessed-included"]], color="C3", linestyle="--",
                     label=f"top {table['guessed-included']}: guessed included")
    if table["guessed-excluded"]:
        axis.axvline(order[table["guessed-excluded"] - 1], color="C0", linestyle="--",
                     label=f"bottom {table['guessed-excluded']}: guessed excluded")
    axis.set_xlabel("canary score: " + SCORE_TEXT.get(table["score"], table["score"]))
    axis.set_ylabel("canaries")
    accountant = table.get("accountant-epsilon")
    axis.set_title(f"{table['level']}-level audit: epsilon >= "
                   f"{table['epsilon-lower-bound']:.3f} at {table['confidence'] * 100:g} % "
                   f"(accountant: {'no DP' if accountant is None else f'{accountant:.3g}'})")
    legend_outside(axis, fontsize="small")
    directory = Path(run_dir) / PLOT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return save_figure(figure, directory / PLOT_FILE)
