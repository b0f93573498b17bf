"""LEAF benchmarks, measured with `fedmirasol simulate`'s engine (Flower's simulation engine, Ray).

- ``synthetic``: FedAvg on Synthetic(1, 1) (`fedmirasol data leaf-synthetic --alpha 1 --beta 1
  --users 30`) with the paper's settings (`simulations/leaf-synthetic.toml`: 10 of 30 clients
  per round, 20 local epochs, SGD lr 0.01, batch 10, 200 rounds); the accuracy over the users'
  test parts per round.
- ``digits``: LEAF's FEMNIST CNN on real handwriting in FEMNIST's format (scikit-learn's 1,797
  digits drawn at 28 x 28, 20 writers; `fedmirasol.testing.leaf_digits`), FedAvg with 10 of 20
  clients per round; accuracy and wall time per round (acceptance: far above the 10 % chance
  in under 10 minutes). ``--mirasol`` adds the tiny Mirasol on the same data, each image a
  single-frame clip without audio.

    python benchmarks/leaf_benchmark.py synthetic [--rounds 200] [--set key=value ...]
    python benchmarks/leaf_benchmark.py digits [--rounds 8] [--mirasol] [--set key=value ...]

Prints one JSON object per run (per-round accuracies, wall time, the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["simulation.max-parallel-clients=1", "client.threads=1", "output.plots=false"]


def simulate_rounds(config_file: Path | None, overrides: list[str], runs_dir: str) -> dict:
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir

    config = load_config(config_file, [*QUIET, *overrides, f"output.runs-dir='{runs_dir}'"])
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    run = simulate(config, progress=lambda record: print(json.dumps(
        {k: record.get(k) for k in ("round", "centralized_accuracy", "train_loss",
                                    "duration_s")}), flush=True))
    seconds = time.perf_counter() - started
    metrics = rundir.read_metrics(run)
    accuracy = [r["centralized_accuracy"] for r in metrics if r.get("centralized_accuracy")
                is not None]
    tail = accuracy[-10:]
    return {"model": config.model.name, "rounds": config.num_rounds,
            "clients": config.data.num_clients, "final_accuracy": accuracy[-1],
            "best_accuracy": max(accuracy), "mean_last_10": sum(tail) / len(tail),
            "accuracy_per_round": [round(a, 4) for a in accuracy],
            "round_seconds": [round(r["duration_s"], 1) for r in metrics[1:]],
            "wall_seconds": round(seconds, 1),
            "load_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "run_dir": str(run)}


def synthetic(args: argparse.Namespace, work: Path) -> list[dict]:
    from fedmirasol.data.leaf.synthetic import SyntheticSpec, write_synthetic

    write_synthetic(SyntheticSpec(alpha=1.0, beta=1.0, users=30, seed=args.seed),
                    work / "synthetic")
    overrides = [f"data.leaf-path='{work / 'synthetic'}'", f"num-rounds={args.rounds or 200}",
                 *args.overrides]
    return [simulate_rounds(ROOT / "simulations" / "leaf-synthetic.toml", overrides,
                            str(work / "runs"))]


def digits(args: argparse.Namespace, work: Path) -> list[dict]:
    from fedmirasol.testing.leaf_digits import write_digits_femnist

    write_digits_femnist(work / "digits", writers=20, seed=args.seed)
    base = [f"data.leaf-path='{work / 'digits'}'", "data.source='leaf'", "data.num-clients=20",
            "name='leaf-digits'", f"num-rounds={args.rounds or 8}", "client.batch-size=10",
            "client.local-epochs=2", "client.optimizer='adam'", "client.lr=0.001",
            "strategy.fraction-train=0.5", "strategy.fraction-evaluate=0.0"]
    models = ["leaf-cnn", "tiny"] if args.mirasol else ["leaf-cnn"]
    return [simulate_rounds(None, [*base, f"model.name='{model}'", *args.overrides],
                            str(work / "runs")) for model in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("synthetic", "digits"))
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 200 / 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--mirasol", action="store_true", help="digits: Mirasol too")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for row in (synthetic if args.part == "synthetic" else digits)(args, Path(folder)):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
