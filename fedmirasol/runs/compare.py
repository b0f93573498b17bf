"""Several run directories side by side (`fedmirasol compare`): a table of each run's results
and totals, and a PNG of their per-round curves, each run labelled by what differs in its
resolved config."""

from __future__ import annotations

import csv
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedmirasol.config import to_flat  # noqa: E402
from fedmirasol.errors import ConfigError, did_you_mean  # noqa: E402
from fedmirasol.privacy import ledger  # noqa: E402
from fedmirasol.privacy.report import epsilon_text  # noqa: E402
from fedmirasol.runs import run_dir as rundir  # noqa: E402
from fedmirasol.runs.plots import MARKERS, megabytes_sent, round_axis, save_figure  # noqa: E402
from fedmirasol.runs.trackers.scalars import worst_client_epsilon  # noqa: E402

EPSILON = "worst_client_epsilon"  # the one metric that comes from the privacy ledger
# Keys that change where a run writes or how fast it runs, not what it computes: no label.
NOT_LABELS = ("output.", "simulation.", "client.threads", "client.device",
              "client.eval-batch-size")
LINESTYLES = ("-", "--", ":", "-.")
COLUMNS = ("run", "rounds", "final_central_acc", "best_central_acc", "final_fed_acc",
           "best_fed_acc", "MB_down", "MB_up", "wall_s", "worst_epsilon", "label")


@dataclass
class ComparedRun:
    """One run directory's config, metrics.jsonl, report.json and privacy ledger."""

    run_dir: Path
    config: dict[str, Any]  # the resolved config, flat ("strategy.name": "fedavg")
    rounds: list[dict[str, Any]]
    report: dict[str, Any]
    ledger: list[dict[str, Any]]
    label: str = ""

    @classmethod
    def load(cls, run_dir: str | Path) -> "ComparedRun":
        run_dir = Path(run_dir)
        config = rundir.read_config(run_dir)  # FileNotFoundError: not a run directory
        rounds = rundir.read_metrics(run_dir)
        if not any(r["round"] > 0 for r in rounds):
            raise ConfigError(f"{run_dir} has no completed rounds in {rundir.METRICS_FILE}: "
                              f"nothing to compare")
        records = ledger.read(run_dir) if ledger.ledger_path(run_dir).is_file() else []
        return cls(run_dir, to_flat(config), rounds, rundir.read_report(run_dir), records)

    def series(self, metric: str) -> list[tuple[int, float]]:
        """(round, value) of every round that has `metric`."""
        if metric == EPSILON:
            points = [(r["round"], worst_client_epsilon(self.ledger, r["round"]))
                      for r in self.rounds if r["round"] > 0]
        else:
            points = [(r["round"], r.get(metric)) for r in self.rounds]
        return [(rnd, float(value)) for rnd, value in points
                if isinstance(value, (int, float)) and not isinstance(value, bool)]

    def trained(self, metric: str) -> list[float]:
        """`metric` over the trained rounds (round 0, the initial model, left out)."""
        return [value for rnd, value in self.series(metric) if rnd > 0]

    def summary(self) -> dict[str, Any]:
        """One row of the table."""
        trained = [r for r in self.rounds if r["round"] > 0]
        central, federated = self.trained("centralized_accuracy"), self.trained(
            "federated_accuracy")
        wall = self.report.get("wall_clock_seconds")
        worst = worst_client_epsilon(self.ledger, trained[-1]["round"])
        return {
            "run": self.run_dir.name, "rounds": trained[-1]["round"],
            "final_central_acc": central[-1] if central else None,
            "best_central_acc": max(central, default=None),
            "final_fed_acc": federated[-1] if federated else None,
            "best_fed_acc": max(federated, default=None),
            "MB_down": sum(r.get("bytes_down", 0) for r in trained) / 1e6,
            "MB_up": sum(r.get("bytes_up", 0) for r in trained) / 1e6,
            # the run's wall-clock time when its caller measured it, else its rounds' time
            "wall_s": wall if wall is not None else sum(r.get("duration_s", 0.0)
                                                        for r in trained),
            "worst_epsilon": worst, "label": self.label,
        }


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config keys whose values differ between the runs (settings that do not change what
    a run computes, such as output.* and threads, left out)."""
    keys = sorted({key for config in configs for key in config})
    return [key for key in keys if not key.startswith(NOT_LABELS)
            and len({repr(config.get(key)) for config in configs}) > 1]


def label_runs(runs: Sequence[ComparedRun]) -> None:
    """Label each run by its values of the keys that differ ("strategy.name=fedprox,
    num-rounds=5"); runs whose configs do not differ so are labelled by their directory."""
    keys = differing_keys([run.config for run in runs])
    for run in runs:
        run.label = ", ".join(f"{key}={_text(run.config.get(key))}" for key in keys) \
            or run.run_dir.name
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1 and run.label != run.run_dir.name:
            run.label = f"{run.label} ({run.run_dir.name})"


def _text(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def load_runs(run_dirs: Iterable[str | Path]) -> list[ComparedRun]:
    runs = [ComparedRun.load(path) for path in run_dirs]
    label_runs(runs)
    return runs


def metrics(runs: Sequence[ComparedRun]) -> list[str]:
    """The per-round metrics the runs hold (numbers of metrics.jsonl, and the worst client's
    epsilon of DP runs)."""
    names = {key for run in runs for record in run.rounds for key, value in record.items()
             if key != "round" and isinstance(value, (int, float))
             and not isinstance(value, bool)}
    if any(run.ledger for run in runs):
        names.add(EPSILON)
    return sorted(names)


def check_metric(runs: Sequence[ComparedRun], metric: str) -> None:
    known = metrics(runs)
    if metric not in known:
        raise ConfigError(f"--metric {metric!r} is not a per-round metric of these runs"
                          f"{did_you_mean(metric, known)}; they have: {', '.join(known)}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as aligned text, accuracies to 3 places, epsilon rounded up."""
    def cell(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column == "worst_epsilon":
            return epsilon_text(value)
        if isinstance(value, float):
            return f"{value:.3f}" if "acc" in column else f"{value:.2f}" if "MB" in column \
                else f"{value:.1f}"
        return str(value)

    cells = [list(COLUMNS)] + [[cell(c, row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    lines = [" ".join(text.ljust(width) if i == 0 else text.rjust(width)
                      for i, (text, width) in enumerate(zip(line, widths))) + "  " + line[-1]
             for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_comparison(runs: Sequence[ComparedRun], metric: str, path: str | Path) -> Path:
    """The runs' `metric` per round, overlaid; beside it the same against the megabytes sent
    so far (down + up), and, when a run used DP and `metric` is not epsilon, the worst
    client's epsilon per round."""
    panels = ["round", "bytes"] + (["epsilon"] if metric != EPSILON
                                   and any(run.ledger for run in runs) else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2),
                                squeeze=False)
    name = metric.replace("_", " ")
    for i, run in enumerate(runs):
        # colour, marker and dash differ, so a run's curve shows where it lies on another's
        style = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "markersize": 5,
                 "linestyle": LINESTYLES[i % len(LINESTYLES)], "linewidth": 1.6,
                 "markerfacecolor": "none" if i % 2 else f"C{i % 10}",
                 "label": textwrap.fill(run.label, 90)}
        for axis, panel in zip(axes[0], panels):
            points = run.series(EPSILON if panel == "epsilon" else metric)
            if panel == "bytes":
                sent = megabytes_sent(run.rounds)
                points = [(sent[rnd], value) for rnd, value in points if rnd in sent]
            if points:
                axis.plot(*zip(*points), **style)
            elif panel == "round":  # still in the legend, saying why no curve shows
                axis.plot([], [], **(style | {"label": f"{style['label']} (no {name})"}))
    for axis, panel in zip(axes[0], panels):
        if panel == "round":
            axis.set(ylabel=name, title=f"{name} per round")
            round_axis(axis)
        elif panel == "bytes":
            axis.set(xlabel="MB sent so far (down + up)", ylabel=name,
                     title=f"{name} against communication")
        else:
            axis.set(ylabel="worst client's epsilon", title="privacy spent (worst client)")
            axis.set_ylim(bottom=0)
            round_axis(axis)
        if "accuracy" in metric and panel != "epsilon":
            axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.tight_layout()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  frameon=False, fontsize="small", ncol=1 if len(runs) > 4 else len(runs))
    return save_figure(figure, Path(path))
