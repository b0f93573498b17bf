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

- ``index``: one FEMNIST-sized LEAF file (LEAF writes 100 writers per file; 226 images per
  writer, FEMNIST's mean; pixel values k/255 printed as LEAF's json.dump prints them): building
  the byte-offset index, loading it from the cache and reading one user, against loading the
  file whole with ``json.load`` (what LEAF's ``read_dir`` does), each in a fresh process (time
  and peak memory).

    python benchmarks/leaf_benchmark.py synthetic [--rounds 200] [--set key=value ...]
    python benchmarks/leaf_benchmark.py digits [--rounds 8] [--mirasol] [--set key=value ...]
    python benchmarks/leaf_benchmark.py index [--writers 100]

Prints one JSON object per run (per-round accuracies, wall time, the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


# Each measurement runs in a fresh interpreter: `setup` (imports), then `timed`; it prints the
# timed part's wall and CPU seconds and the process's peak resident memory (VmHWM, MB).
_MEASURE = """
import json, time
{setup}
wall, cpu = time.perf_counter(), time.process_time()
{timed}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
                  "peak_rss_mb": round(peak / 1024)}}))
"""


def _measure(setup: str, timed: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(setup=setup, timed=timed)],
                         env=env, text=True, capture_output=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def index(args: argparse.Namespace, work: Path) -> list[dict]:
    import numpy as np

    from fedmirasol.testing.leaf_digits import femnist_digits

    pixels, labels = femnist_digits()
    levels = np.round(pixels * 255).astype(int)  # FEMNIST's values are k / 255
    rng = np.random.default_rng(0)
    path = work / "train" / "all_data_0_niid_05_keep_0_train_9.json"
    path.parent.mkdir(parents=True)
    with path.open("w") as handle:  # streamed: the file is written one writer at a time
        users = [f"f{w:04d}_{w % 100:02d}" for w in range(args.writers)]
        handle.write(json.dumps({"users": users, "num_samples": [226] * len(users)})[:-1])
        handle.write(', "user_data": {')
        for w, user in enumerate(users):
            chosen = rng.integers(0, len(labels), 226)
            x = [[v / 255 for v in levels[i].tolist()] for i in chosen]
            handle.write(("" if w == 0 else ", ") + json.dumps(user) + ": "
                         + json.dumps({"x": x, "y": labels[chosen].tolist()}))
        handle.write("}}")
    env = {**os.environ, "FEDMIRASOL_CACHE": str(work / "cache")}
    last = users[-1]
    importing = "from fedmirasol.data.leaf import index_file"
    rows = {
        "file_mb": round(path.stat().st_size / 2**20),
        "json_load_whole_file": _measure("", f"json.load(open({str(path)!r}))", env),
        "index_build": _measure(importing, f"index_file({str(path)!r})", env),
        "index_from_cache_and_read_one_user": _measure(
            importing, f"assert len(index_file({str(path)!r}).read({last!r})['x']) == 226", env),
        "imports_only": _measure(importing, "", env),
        "load": round(os.getloadavg()[0], 2),
    }
    return [rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("synthetic", "digits", "index"))
    parser.add_argument("--writers", type=int, default=100, help="index: writers in the file")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 200 / 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--mirasol", action="store_true", help="digits: Mirasol too")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        part = {"synthetic": synthetic, "digits": digits, "index": index}[args.part]
        for row in part(args, Path(folder)):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
