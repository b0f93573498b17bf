"""Update codecs side by side on the default simulation (`simulations/quickstart.toml`).

Runs the same federation (same seed, same rounds) once per codec, in this process (the real
ClientApp and server loop over the in-process Grid, one client at a time), and prints per
codec the bytes sent up and down as serialized on the wire, the up-bytes ratio against float32
deltas (the `none` row), the final and best centralized accuracy, the bytes up to reach 50 %
accuracy, and the seconds its rounds took, as a Markdown table and JSON lines.

    python benchmarks/compression_table.py [--rounds 20] [--set key=value ...]
        [--codecs none,q8,q4,q2,topk,topk-noef,randk,lowrank,q2-down8] [--out rows.jsonl]
        [--runs-dir DIR]

The run directories stay in --runs-dir: `fedmirasol compare DIR/cmp-*` plots accuracy
against the bytes sent, and `--summarize DIR/cmp-* --rounds R` tables runs that were stopped
(or compares them at round R) without running anything.

Acceptance reference: a codec with >= 8x fewer up-bytes than `none` within 2 points of its
final accuracy; `topk` against `topk-noef` (error feedback on and off).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "simulations" / "quickstart.toml"
CODECS = {
    "none": [],
    "q8": ["compression.codec='quantize'", "compression.bits=8"],
    "q4": ["compression.codec='quantize'", "compression.bits=4"],
    "q2": ["compression.codec='quantize'", "compression.bits=2"],
    "topk": ["compression.codec='top-k'", "compression.fraction=0.05"],
    "topk-noef": ["compression.codec='top-k'", "compression.fraction=0.05",
                  "compression.error-feedback=false"],
    "randk": ["compression.codec='random-k'", "compression.fraction=0.05"],
    "lowrank": ["compression.codec='low-rank'", "compression.rank=4"],
    "q2-down8": ["compression.codec='quantize'", "compression.bits=2",
                 "compression.downlink='quantize'"],
}


def run_codec(label: str, overrides: list[str], runs_dir: str) -> dict:
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.config import load_config
    from fedmirasol.engines.apps import build_client_app
    from fedmirasol.runs.resume import open_run
    from fedmirasol.server.loop import FederatedRun
    from fedmirasol.testing.local_grid import LocalGrid

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = load_config(CONFIG, [*overrides, *CODECS[label], f"output.runs-dir='{runs_dir}'",
                                  f"name='cmp-{label}'", "output.plots=false",
                                  "client.threads=1"])
    opened = open_run(config)
    nodes = {100 + i: {"partition-id": i, "num-partitions": config.data.num_clients}
             for i in range(config.data.num_clients)}
    FederatedRun(LocalGrid(build_client_app(), nodes), opened.config, opened.run_dir).run()
    return summarize(opened.run_dir)


def summarize(run_dir: Path, up_to: int | None = None) -> dict:
    """A run directory's row: bytes and accuracy over its rounds (up to round `up_to`) and the
    seconds its rounds took."""
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.runs.report import bytes_to_accuracy

    config = rundir.read_config(run_dir)
    rounds = [r for r in rundir.read_metrics(run_dir)
              if 0 < r["round"] <= (up_to or config.num_rounds)]
    accuracy = [r["centralized_accuracy"] for r in rounds]
    return {"codec": config.name.removeprefix("cmp-"),
            "run": str(run_dir), "rounds": len(rounds),
            "bytes_up": sum(r["bytes_up"] for r in rounds),
            "bytes_down": sum(r["bytes_down"] for r in rounds),
            "final_accuracy": accuracy[-1], "best_accuracy": max(accuracy),
            "bytes_up_to_50": bytes_to_accuracy(rounds).get("50%", {}).get("bytes_up"),
            "rejected": sum(len(r["rejected"]) for r in rounds),
            "seconds": sum(r["duration_s"] for r in rounds)}


def codec_cpu(labels: list[str], repeats: int = 5) -> list[dict]:
    """CPU seconds (process time, median of `repeats`) to encode and to decode one client's
    update of the default model with each codec: the load-robust cost of compression."""
    import numpy as np

    from fedmirasol.compression.registry import update_codec
    from fedmirasol.config import load_config
    from fedmirasol.core import vector
    from fedmirasol.core.parameters import model_state
    from fedmirasol.task.model import init_model, parameter_split

    rows = []
    for label in labels:
        config = load_config(CONFIG, CODECS[label])
        model = init_model(config)
        layout = vector.layout(model_state(model, parameter_split(model, config).shared))
        values = np.random.default_rng(0).standard_normal(vector.size(layout)).astype(np.float32)
        codec = update_codec(config.compression)
        if codec is None:
            continue
        timings: dict[str, list[float]] = {"encode": [], "decode": []}
        for seed in range(repeats):
            started = time.process_time()
            payload = codec.encode(values * 1e-3, layout, np.random.default_rng(seed), {})
            timings["encode"].append(time.process_time() - started)
            started = time.process_time()
            codec.decode(payload, layout)
            timings["decode"].append(time.process_time() - started)
        rows.append({"codec": label, "values": values.size,
                     **{f"{k}_cpu_ms": 1000 * float(np.median(v)) for k, v in timings.items()}})
    return rows


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["codec"] == "none"), None)
    lines = ["| codec | rounds | MB up | up ratio vs float32 | MB down | final acc | best acc | "
             "MB up to 50 % | round seconds |", "| --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for row in rows:
        ratio = f"{base['bytes_up'] / row['bytes_up']:.1f}x" if base else "-"
        lines.append(
            f"| {row['codec']} | {row['rounds']} | {_mb(row['bytes_up'])} | {ratio} | "
            f"{_mb(row['bytes_down'])} | {100 * row['final_accuracy']:.1f} % | "
            f"{100 * row['best_accuracy']:.1f} % | {_mb(row['bytes_up_to_50'])} | "
            f"{row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "compression-table")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                        help="no new runs: the table of these run directories, up to round "
                        "--rounds (runs of one config compared at the same round)")
    parser.add_argument("--cpu", action="store_true",
                        help="no runs: the CPU time to encode and decode one update per codec")
    args = parser.parse_args()
    if args.cpu:
        for row in codec_cpu([label.strip() for label in args.codecs.split(",")]):
            write_row(row, args.out)
        return
    if args.summarize:
        print(markdown([write_row(summarize(path, args.rounds), args.out)
                        for path in args.summarize]))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = [*args.overrides, *([f"num-rounds={args.rounds}"] if args.rounds else [])]
    table = [write_row(run_codec(label.strip(), settings, str(args.runs_dir)), args.out)
             for label in args.codecs.split(",")]
    print(markdown(table))


def write_row(row: dict, out: Path | None) -> dict:
    """Print `row` as a JSON line (and append it to `out`); return it."""
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as handle:
            handle.write(line + "\n")
    return row


if __name__ == "__main__":
    main()
