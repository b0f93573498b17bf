"""A run directory's plots (integer round ticks, distinguishable clients, legends that hide no
data) and report.json's parameter counts, on hand-written run directories."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedmirasol.config import from_table
from fedmirasol.runs import plots
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.report import build_report, shared_counts
from fedmirasol.runs.privacy_plots import plot_epsilon

CONFIG = {"name": "hand", "strategy": {"name": "fedavg"}, "split": {"local": ""},
          "num-rounds": 10}


def write_run(directory: Path, clients: int, rounds: int, weak: tuple[int, ...] = (),
              personal: bool = False) -> Path:
    """metrics.jsonl as the server loop writes it; the `weak` clients trail the others."""
    directory.mkdir(parents=True, exist_ok=True)
    rundir.write_config(directory, from_table({**CONFIG, "num-rounds": rounds}))
    rng = np.random.default_rng(0)
    rundir.append_metrics(directory, {"round": 0, "centralized_accuracy": 0.1,
                                      "centralized_loss": 2.3})
    for r in range(1, rounds + 1):
        rows = {}
        for c in range(clients):
            acc = float(np.clip(0.3 + 0.05 * r - (0.25 if c in weak else 0.0)
                                + rng.uniform(-0.03, 0.03), 0, 1))
            rows[str(c)] = {"val_accuracy": acc, "val_loss": 1.0, "val_examples": 4.0,
                            "train_loss": 1.5, "train_examples": 8.0}
            if personal:
                rows[str(c)]["personal_accuracy"] = min(1.0, acc + 0.1)
        mean = float(np.mean([row["val_accuracy"] for row in rows.values()]))
        record = {"round": r, "centralized_accuracy": mean, "centralized_loss": 1.2,
                  "federated_accuracy": mean, "federated_loss": 1.1,
                  "federated_accuracy_client_mean": mean, "train_loss": 1.5, "clients": rows,
                  "participants": list(range(clients)), "sampled": list(range(clients)),
                  "rejected": [], "bytes_down": 7_000_000, "bytes_up": 3_500_000,
                  "duration_s": 1.0}
        if personal:
            record["personal_accuracy_client_mean"] = mean + 0.1
        rundir.append_metrics(directory, record)
    return directory


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open so the test can inspect them."""
    kept: list[plt.Figure] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for figure in kept:
        close(figure)


def _round_axes(figure: plt.Figure) -> list[plt.Axes]:
    return [ax for ax in figure.axes if ax.get_xlabel() == "round"]


def _check_ticks_and_legends(figure: plt.Figure) -> None:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in _round_axes(figure):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
        assert all(text.lstrip("−-").isdigit() for text in labels), labels
    for ax in figure.axes:
        legend = ax.get_legend()
        if legend is not None:  # outside the axes: it covers no data
            box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            assert not box.overlaps(area), (ax.get_title(), box, area)


@pytest.mark.parametrize("clients,rounds", [(3, 2), (4, 10), (12, 5)])
def test_run_plots_are_written_with_integer_round_ticks(tmp_path, figures, clients, rounds):
    run = write_run(tmp_path / "run", clients, rounds, personal=clients == 4)
    paths = plots.plot_run(run)
    names = {p.name for p in paths}
    assert {"accuracy_loss.png", "client_accuracy.png", "bytes.png"} <= names
    assert ("personalization.png" in names) == (clients == 4)
    for path in paths:
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figures) == len(paths)
    for figure in figures:
        _check_ticks_and_legends(figure)


def test_few_clients_get_distinct_colours_and_markers(tmp_path, figures):
    plots.plot_run(write_run(tmp_path / "run", 6, 4))
    ax = figures[1].axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("client")]
    assert len(lines) == 6
    assert len({line.get_color() for line in lines}) == 6
    assert len({line.get_marker() for line in lines}) == 6


def test_many_clients_show_median_band_and_name_the_worst(tmp_path, figures):
    plots.plot_run(write_run(tmp_path / "run", 12, 6, weak=(4, 9)))
    ax = figures[1].axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "median client" in labels
    assert any(label.startswith("interquartile range (12 clients)") for label in labels)
    worst = [label for label in labels if label.startswith("worst:")]
    assert len(worst) == plots.WORST_CLIENTS
    assert worst[0].startswith(("worst: client 4 ", "worst: client 9 "))
    assert worst[1].startswith(("worst: client 4 ", "worst: client 9 "))
    assert not any(label.startswith("client ") for label in labels)  # no 12-entry legend


def test_privacy_plot_integer_ticks_and_worst_spenders(tmp_path, figures):
    records = [{"kind": "client", "round": r, "partition-id": c, "epsilon": 0.3 * r * (1 + c),
                "budget": 8.0} for r in range(1, 6) for c in range(10)]
    records += [{"kind": "client-level", "round": r, "epsilon": 0.2 * r} for r in range(1, 6)]
    path = plot_epsilon(records, tmp_path / "p" / "privacy-epsilon.png")
    assert path.is_file()
    (figure,) = figures
    _check_ticks_and_legends(figure)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert [label.split(" (")[0] for label in labels if label.startswith("worst:")] == [
        "worst: client 9", "worst: client 8", "worst: client 7"]
    assert "client-level" in labels and "budget 8" in labels


def test_privacy_plot_few_clients_one_line_each(tmp_path, figures):
    records = [{"kind": "client", "round": r, "partition-id": c, "epsilon": 0.3 * r * (1 + c)}
               for r in range(1, 4) for c in range(3)]
    plot_epsilon(records, tmp_path / "privacy-epsilon.png")
    labels = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert labels == ["client 0", "client 1", "client 2"]
    _check_ticks_and_legends(figures[0])


def test_report_counts_scalar_parameters_not_tensors(tmp_path):
    run = write_run(tmp_path / "run", 2, 2)
    shared = {"conv.weight": np.zeros((8, 3, 3, 3), np.float32),
              "conv.bias": np.zeros(8, np.float32),
              "norm.running_mean": np.zeros(8, np.float32)}
    assert shared_counts(shared) == {"shared_parameters": 8 * 27 + 8 + 8, "shared_tensors": 3}
    report = build_report(run, shared=shared)
    assert report["shared_parameters"] == 232 and report["shared_tensors"] == 3
    json.dumps(report)  # plain ints in report.json

    assert "shared_parameters" not in build_report(run)  # no checkpoint, nothing passed
    rundir.save_checkpoint(run, rundir.Checkpoint(server_round=2, global_shared=shared,
                                                  strategy_state={}, partitions={}))
    assert build_report(run)["shared_parameters"] == 232  # `fedmirasol report` on a run dir


def test_a_round_without_client_validation_plots_without_warnings(tmp_path, figures):
    """A round whose clients all timed out of evaluation: empty panels say so, no legend
    warning."""
    run = write_run(tmp_path / "run", 2, 1)
    records = rundir.read_metrics(run)
    for row in records[1]["clients"].values():
        del row["val_accuracy"]
    (run / rundir.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plots.plot_run(run)
    assert all(path.is_file() for path in paths)
    texts = [text.get_text() for text in figures[1].axes[0].texts]
    assert texts == ["no client reported a validation accuracy"]
