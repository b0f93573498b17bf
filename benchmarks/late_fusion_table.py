"""Mirasol against the late-fusion baseline (TimeSformer + AST) on the synthetic task.

Rows: Mirasol; late fusion with alpha 0.5, 1.0, 1.5 and learned (from 1.0); late fusion
(alpha 1.0) with video only and with audio only. Columns: centralized (`fedmirasol train`, the
modality removed with `--drop-modality`) and the default simulation (`fedmirasol simulate
--set model.name=...`, the modality removed from every client with `data.drop-*-prob = 1`).
Each run is a fresh `fedmirasol` process with one torch thread; results are kept in
`OUT/results.json`, so an interrupted table resumes where it stopped.

    python benchmarks/late_fusion_table.py --columns central simulate --out runs/late-fusion-table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmirasol.runs import run_dir as rundir

FEDMIRASOL = str(Path(sys.executable).with_name("fedmirasol"))  # the venv's command


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    model: str
    overrides: dict[str, object] = field(default_factory=dict)  # model config fields
    drop: str | None = None  # "video" or "audio"


ROWS = (
    Row("mirasol", "Mirasol (`tiny`)", "tiny"),
    Row("alpha-0.5", "late fusion, alpha 0.5", "latefusion-tiny", {"alpha": 0.5}),
    Row("alpha-1.0", "late fusion, alpha 1.0", "latefusion-tiny", {"alpha": 1.0}),
    Row("alpha-1.5", "late fusion, alpha 1.5", "latefusion-tiny", {"alpha": 1.5}),
    Row("alpha-learned", "late fusion, alpha learned (from 1.0)", "latefusion-tiny",
        {"alpha": 1.0, "learn_alpha": True}),
    Row("video-only", "late fusion, alpha 1.0, video only", "latefusion-tiny", {"alpha": 1.0},
        drop="audio"),
    Row("audio-only", "late fusion, alpha 1.0, audio only", "latefusion-tiny", {"alpha": 1.0},
        drop="video"),
)


def _run(command: list[str], log: Path) -> float:
    """Run a `fedmirasol` command with one torch thread, its output to `log`; return seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=True)
    return time.perf_counter() - started


def central(row: Row, args: argparse.Namespace, out: Path) -> dict[str, float]:
    run = out / f"central-{row.key}"
    command = [
        FEDMIRASOL, "train", "--model", row.model, "--threads", "1",
        "--device", "cpu", "--epochs", str(args.epochs), "--train-clips", str(args.train_clips),
        "--val-clips", str(args.val_clips), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--out", str(run),
    ]
    if "alpha" in row.overrides:
        command += ["--alpha", str(row.overrides["alpha"])]
    if row.overrides.get("learn_alpha"):
        command.append("--learn-alpha")
    if row.drop:
        command += ["--drop-modality", row.drop]
    seconds = _run(command, out / f"central-{row.key}.log")
    summary = json.loads((run / "summary.json").read_text())
    return {"accuracy": summary["final_val_accuracy"], "best": summary["best_val_accuracy"],
            "seconds": round(seconds, 1)}


def simulation(row: Row, args: argparse.Namespace, out: Path) -> dict[str, float]:
    runs = out / f"simulate-{row.key}"
    settings = {
        "model.name": row.model, "num-rounds": args.rounds, "output.runs-dir": str(runs),
        "simulation.max-parallel-clients": args.parallel,
        **{f"model.{k.replace('_', '-')}": v for k, v in row.overrides.items()},
    }
    if row.drop:
        settings[f"data.drop-{row.drop}-prob"] = 1.0
    command = [FEDMIRASOL, "simulate"]
    for key, value in settings.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    if runs.exists() and any(runs.iterdir()):
        raise FileExistsError(f"{runs} holds an earlier run; move it away to redo this row")
    seconds = _run(command, out / f"simulate-{row.key}.log")
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    rounds = [r for r in rundir.read_metrics(run) if r["round"] > 0]
    if not rounds or any(not r["participants"] for r in rounds):
        raise RuntimeError(f"{run}: a round had no accepted update (see {run}/metrics.jsonl)")
    final = rounds[-1]
    return {
        "accuracy": final["centralized_accuracy"],
        "best": max(r["centralized_accuracy"] for r in rundir.read_metrics(run)
                    if r["round"] > 0 and r["centralized_accuracy"] is not None),
        "federated_accuracy": final.get("federated_accuracy"),
        "seconds": round(seconds, 1),
    }


COLUMNS = {"central": central, "simulate": simulation}


def percent(value: float | None, best: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" + ("" if best is None else f" ({100 * best:.1f} %)")


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| model | centralized: val. accuracy, final (best epoch) | time "
        "| simulation: server test accuracy, final (best round) | clients' val. accuracy | time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        c = results.get(row.key, {}).get("central", {})
        s = results.get(row.key, {}).get("simulate", {})
        lines.append(
            f"| {row.label} | {percent(c.get('accuracy'), c.get('best'))} | {c.get('seconds', '-')} s "
            f"| {percent(s.get('accuracy'), s.get('best'))} | {percent(s.get('federated_accuracy'))} "
            f"| {s.get('seconds', '-')} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/late-fusion-table"))
    parser.add_argument("--columns", nargs="+", choices=tuple(COLUMNS), default=list(COLUMNS))
    parser.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS],
                        default=[r.key for r in ROWS], help="rows to run, in this order")
    parser.add_argument("--epochs", type=int, default=4, help="centralized epochs")
    parser.add_argument("--train-clips", type=int, default=1000)
    parser.add_argument("--val-clips", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rounds", type=int, default=8, help="simulation rounds")
    parser.add_argument("--parallel", type=int, default=1, help="clients trained at once")
    parser.add_argument("--redo", action="store_true", help="rerun rows already in results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for column in args.columns:
        for row in (next(r for r in ROWS if r.key == key) for key in args.rows):
            if column in results.get(row.key, {}) and not args.redo:
                continue
            print(f"{column}: {row.label} ...", flush=True)
            results.setdefault(row.key, {})[column] = COLUMNS[column](row, args, args.out)
            results[row.key][column]["settings"] = {k: v for k, v in vars(args).items()
                                                   if k not in ("out", "columns", "rows", "redo")}
            store.write_text(json.dumps(results, indent=2))
            print(f"  {results[row.key][column]}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
