"""PNG plots of a run: accuracy and loss per round, per-client accuracy, bytes per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmirasol.federated import run_dir as rundir  # noqa: E402

PLOT_DIR = "plots"


def _series(rounds: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


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
    acc.set(xlabel="round", ylabel="accuracy", title="Accuracy per round", ylim=(0, 1))
    loss.set(xlabel="round", ylabel="loss", title="Loss per round")
    acc.legend(), loss.legend()
    paths.append(_save(fig, out / "accuracy_loss.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    clients = sorted({pid for r in rounds for pid in r.get("clients", {})}, key=int)
    for pid in clients:
        points = [(r["round"], r["clients"][pid]["val_accuracy"]) for r in rounds
                  if "val_accuracy" in r.get("clients", {}).get(pid, {})]
        if points:
            ax.plot(*zip(*points), alpha=0.6, linewidth=1, label=f"client {pid}")
    ax.set(xlabel="round", ylabel="validation accuracy", title="Per-client accuracy",
           ylim=(0, 1))
    if len(clients) <= 12:
        ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "client_accuracy.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    trained = [r for r in rounds if r["round"] > 0]
    xs = [r["round"] for r in trained]
    ax.bar([x - 0.2 for x in xs], [r["bytes_down"] / 1e6 for r in trained], 0.4, label="down")
    ax.bar([x + 0.2 for x in xs], [r["bytes_up"] / 1e6 for r in trained], 0.4, label="up")
    ax.set(xlabel="round", ylabel="MB", title="Bytes per round")
    ax.legend()
    paths.append(_save(fig, out / "bytes.png"))
    if any(r.get("personal_accuracy_client_mean") is not None for r in rounds):
        paths.append(_plot_personalization(rounds, out / "personalization.png"))
    return paths


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
    curve.set(xlabel="round", ylabel="mean client accuracy", ylim=(0, 1),
              title="Global vs personalized (clients' validation)")
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.legend()
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
    bars.legend()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
