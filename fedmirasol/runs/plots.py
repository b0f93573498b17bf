"""PNG plots of a run: accuracy and loss per round, per-client accuracy, bytes per round,
accuracy against the bytes sent so far."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmirasol.runs import run_dir as rundir  # noqa: E402

PLOT_DIR = "plots"
# More clients than this: one line per client is unreadable, so the plots show the median and
# the interquartile range over the clients, and name the worst few (WORST_CLIENTS) as lines.
MAX_CLIENT_LINES = 8
WORST_CLIENTS = 3
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _series(rounds: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def round_axis(ax: plt.Axes) -> None:
    """Rounds are whole numbers: integer ticks only."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def legend_outside(ax: plt.Axes, where: str = "right", **kwargs: Any) -> None:
    """A legend outside the axes (right of them, or below), so it never covers data;
    `save_figure` keeps it in the image (bbox_inches="tight")."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if where == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False,
                  ncol=kwargs.pop("ncol", 2), **kwargs)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  frameon=False, **kwargs)


def plot_clients(ax: plt.Axes, series: Mapping[Any, Sequence[tuple[int, float]]], *,
                 higher_is_worse: bool = False, value: str = "accuracy",
                 fmt: str = ".2f") -> list[Any]:
    """One distinguishable line per client (colour and marker) for up to MAX_CLIENT_LINES
    clients; beyond that the median over the clients per round, the interquartile band, the
    other clients as faint grey lines, and the WORST_CLIENTS worst as named lines. Returns the
    clients drawn by name (all of them, or the worst)."""
    series = {pid: sorted(points) for pid, points in series.items() if points}
    if len(series) <= MAX_CLIENT_LINES:
        for i, (pid, points) in enumerate(series.items()):
            ax.plot(*zip(*points), color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)],
                    markersize=4, linewidth=1.2, label=f"client {pid}")
        return list(series)
    by_round: dict[int, list[float]] = {}
    for points in series.values():
        for rnd, y in points:
            by_round.setdefault(rnd, []).append(y)
    xs = sorted(by_round)
    q1, median, q3 = (np.array([np.percentile(by_round[x], q) for x in xs]) for q in (25, 50, 75))
    worst = worst_clients(series, dict(zip(xs, median)), higher_is_worse)
    for i, (pid, points) in enumerate(p for p in series.items() if p[0] not in worst):
        ax.plot(*zip(*points), color="0.6", linewidth=0.6, alpha=0.35,
                label="other clients" if i == 0 else None)
    ax.fill_between(xs, q1, q3, color="C0", alpha=0.25, linewidth=0,
                    label=f"interquartile range ({len(series)} clients)")
    ax.plot(xs, median, color="C0", linewidth=2.2, label="median client")
    for i, pid in enumerate(worst):
        points = series[pid]
        ax.plot(*zip(*points), color=f"C{(i + 1) % 10}", marker=MARKERS[(i + 1) % len(MARKERS)],
                markersize=4, linewidth=1.4,
                label=f"worst: client {pid} ({value} {format(points[-1][1], fmt)} "
                      f"in round {points[-1][0]})")
    return worst


def worst_clients(series: Mapping[Any, Sequence[tuple[int, float]]], median: Mapping[int, float],
                  higher_is_worse: bool, count: int = WORST_CLIENTS) -> list[Any]:
    """The `count` clients furthest on the bad side of the per-round median, averaged over
    each client's reports in the second half of the run (all its reports if it has none there),
    so a client sampled only in early, weak rounds is not ranked worst for that."""
    last = max(rnd for points in series.values() for rnd, _ in points)
    half = last / 2

    def badness(points: Sequence[tuple[int, float]]) -> float:
        late = [p for p in points if p[0] > half] or list(points)
        gap = float(np.mean([y - median[rnd] for rnd, y in late]))
        return gap if higher_is_worse else -gap

    ranked = sorted(series, key=lambda pid: badness(series[pid]), reverse=True)
    return ranked[:count]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the plots under `run_dir/plots/`; return their paths."""
    run_dir = Path(run_dir)
    rounds = rundir.read_metrics(run_dir)
    if not rounds:
        raise ValueError(f"{run_dir} has no metrics to plot")
    out = run_dir / PLOT_DIR
    out.mkdir(exist_ok=True)
    paths = []

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("centralized_accuracy", "centralized (server test set)"),
                       ("federated_accuracy", "federated (clients' validation, weighted)")):
        acc.plot(*_series(rounds, key), marker="o", label=label)
    for key, label in (("train_loss", "train objective (clients, weighted)"),
                       ("centralized_loss", "centralized (class CE)"),
                       ("federated_loss", "federated (class CE)")):
        loss.plot(*_series(rounds, key), marker="o", label=label)
    acc.set(ylabel="accuracy", title="Accuracy per round", ylim=(0, 1))
    loss.set(ylabel="loss", title="Loss per round")
    for ax in (acc, loss):
        round_axis(ax)
        legend_outside(ax, "below", ncol=1, fontsize="small")
    paths.append(save_figure(fig, out / "accuracy_loss.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    clients = sorted({pid for r in rounds for pid in r.get("clients", {})}, key=int)
    series = {pid: [(r["round"], r["clients"][pid]["val_accuracy"]) for r in rounds
                    if "val_accuracy" in r.get("clients", {}).get(pid, {})] for pid in clients}
    if not plot_clients(ax, series, value="accuracy"):
        ax.text(0.5, 0.5, "no client reported a validation accuracy", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set(ylabel="validation accuracy", ylim=(0, 1),
           title="Per-client accuracy" + ("" if len(clients) <= MAX_CLIENT_LINES else
                                          f": median and spread of {len(clients)} clients"))
    round_axis(ax)
    legend_outside(ax, fontsize="small")
    paths.append(save_figure(fig, out / "client_accuracy.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    trained = [r for r in rounds if r["round"] > 0]
    xs = [r["round"] for r in trained]
    ax.bar([x - 0.2 for x in xs], [r["bytes_down"] / 1e6 for r in trained], 0.4, label="down")
    ax.bar([x + 0.2 for x in xs], [r["bytes_up"] / 1e6 for r in trained], 0.4, label="up")
    ax.set(ylabel="MB", title="Bytes per round (as serialized on the wire)")
    round_axis(ax)
    legend_outside(ax)
    paths.append(save_figure(fig, out / "bytes.png"))
    paths.append(_plot_accuracy_bytes(rounds, out / "accuracy_bytes.png"))
    if any(r.get("personal_accuracy_client_mean") is not None for r in rounds):
        paths.append(_plot_personalization(rounds, out / "personalization.png"))
    if any(r.get("centralized_exact_match") is not None or r.get("federated_exact_match")
           is not None for r in rounds):
        paths.append(_plot_text(rounds, out / "text_metrics.png"))
    if any("attackers" in r for r in rounds):
        paths.append(_plot_attack(rounds, out / "attack.png"))
    return paths


def megabytes_sent(rounds: Sequence[Mapping[str, Any]], directions: Sequence[str] = ("down", "up")
                   ) -> dict[int, float]:
    """Round -> megabytes sent in `directions` by the end of it (0 for the initial model)."""
    total, sent = 0.0, {}
    for record in rounds:
        total += sum(record.get(f"bytes_{way}", 0) for way in directions) / 1e6
        sent[record["round"]] = total
    return sent


def _plot_accuracy_bytes(rounds: list[dict], path: Path) -> Path:
    """Accuracy against the megabytes sent so far: up (the clients' updates) and in total."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, directions, label in ((axes[0], ("up",), "MB sent up so far"),
                                  (axes[1], ("down", "up"), "MB sent so far (down + up)")):
        sent = megabytes_sent(rounds, directions)
        for key, name in (("centralized_accuracy", "centralized (server test set)"),
                          ("federated_accuracy", "federated (clients' validation)")):
            xs, ys = _series(rounds, key)
            if xs:
                ax.plot([sent[x] for x in xs], ys, marker="o", label=name)
        ax.set(xlabel=label, ylabel="accuracy", ylim=(0, 1), title="Accuracy against bytes")
        ax.grid(alpha=0.3)
        legend_outside(ax, "below", ncol=1, fontsize="small")
    return save_figure(fig, path)


def _plot_text(rounds: list[dict], path: Path) -> Path:
    """The videoqa task: exact match per question type and captioning CIDEr per round, on the
    server's test set (solid) and over the clients (dashed)."""
    fig, (em, cap) = plt.subplots(1, 2, figsize=(12, 4))
    kinds = sorted({key[len("centralized_em_"):] for r in rounds for key in r
                    if key.startswith("centralized_em_")}
                   | {key[len("federated_em_"):] for r in rounds for key in r
                      if key.startswith("federated_em_")})
    for i, kind in enumerate(["exact_match", *kinds]):
        name = kind if kind == "exact_match" else f"em_{kind}"
        label = "all questions" if kind == "exact_match" else kind
        for where, style in (("centralized", "-"), ("federated", "--")):
            xs, ys = _series(rounds, f"{where}_{name}")
            if xs:
                em.plot(xs, ys, style, color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)],
                        markersize=4, label=f"{label} ({where})")
    em.set(ylabel="exact match", ylim=(0, 1), title="QA exact match per question type")
    for where, style in (("centralized", "-"), ("federated", "--")):
        for i, key in enumerate(("cider", "bleu4")):
            xs, ys = _series(rounds, f"{where}_{key}")
            if xs:
                values = ys if key == "cider" else [y / 100 for y in ys]
                cap.plot(xs, values, style, color=f"C{i}", marker="o", markersize=4,
                         label=f"{'CIDEr' if key == 'cider' else 'BLEU-4 / 100'} ({where})")
    cap.set(ylabel="score", title="Captioning")
    for ax in (em, cap):
        round_axis(ax)
        legend_outside(ax, "below", ncol=2, fontsize="small")
    return save_figure(fig, path)


def _plot_attack(rounds: list[dict], path: Path) -> Path:
    """Clean accuracy (server test set, honest clients' validation) and, for a targeted
    attack, its success rate per round; a line where the attack starts."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("centralized_accuracy", "clean accuracy (server test set)"),
                       ("federated_accuracy", "clean accuracy (honest clients' validation)"),
                       ("attack_success_rate", "attack success rate (server test set)")):
        xs, ys = _series(rounds, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=label,
                    **({"color": "C3", "linestyle": "--"} if key == "attack_success_rate"
                       else {}))
    start = next((r["round"] for r in rounds if r.get("attackers")), None)
    if start is not None:
        ax.axvline(start - 0.5, color="0.5", linestyle=":", label=f"attack from round {start}")
    ax.set(ylabel="rate", ylim=(0, 1), title="Under attack: clean accuracy and attack success")
    round_axis(ax)
    legend_outside(ax, "below", ncol=1, fontsize="small")
    return save_figure(fig, path)


def _plot_personalization(rounds: list[dict], path: Path) -> Path:
    """Mean client accuracy of the global vs personalized models per round, and per client in
    the final round."""
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4))
    for key, label in (("federated_accuracy_client_mean", "global model"),
                       ("personal_accuracy_client_mean", "personalized model"),
                       ("adapted_accuracy_client_mean", "global model + local adaptation")):
        xs, ys = _series(rounds, key)
        if xs:
            curve.plot(xs, ys, marker="o", label=label)
    curve.set(ylabel="mean client accuracy", ylim=(0, 1),
              title="Global vs personalized (clients' validation)")
    round_axis(curve)
    legend_outside(curve, "below", ncol=1, fontsize="small")
    clients = rounds[-1].get("clients", {})
    pids = sorted((pid for pid, row in clients.items() if "personal_accuracy" in row), key=int)
    xs = list(range(len(pids)))
    bars.bar([x - 0.2 for x in xs], [clients[p].get("val_accuracy", 0.0) for p in pids], 0.4,
             label="global")
    bars.bar([x + 0.2 for x in xs], [clients[p]["personal_accuracy"] for p in pids], 0.4,
             label="personalized")
    bars.set_xticks(xs, pids)
    bars.set(xlabel="client", ylabel="accuracy", ylim=(0, 1),
             title=f"Per client, round {rounds[-1]['round']}")
    legend_outside(bars, "below", fontsize="small")
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    # bbox_inches="tight": the image grows to hold legends placed outside the axes.
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
