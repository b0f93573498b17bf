"""Update codecs side by side on the default simulation (`simulations/quickstart.toml`).

Runs the same federation (same seed, same rounds) once per codec, in this process (the real
ClientApp and server loop over the in-process Grid, one client at a time), and prints per
codec the bytes sent up and down as serialized on the wire, the up-bytes ratio against float32
deltas (the first row, `none`), the final and best centralized accuracy, the bytes up to reach
50 % accuracy, and the wall time, as a Markdown table and JSON lines.

    python benchmarks/compression_table.py [--rounds 20] [--set key=value ...]
        [--codecs none,q8,q4,q2,topk,topk-noef,randk,lowrank,q2-down8] [--out rows.jsonl]
        [--runs-dir DIR]

The run directories stay in --runs-dir: `fedmirasol compare DIR/cmp-*` plots accuracy
against the bytes sent.

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
    from fedmirasol.runs import run_dir as rundir
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
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    report = FederatedRun(LocalGrid(build_client_app(), nodes), opened.config,
                          opened.run_dir).run()
    seconds = time.perf_counter() - started
    rounds = [r for r in rundir.read_metrics(opened.run_dir) if r["round"] > 0]
    return {"codec": label, "settings": report["compression"],
            "bytes_up": report["total_bytes_up"], "bytes_down": report["total_bytes_down"],
            "final_accuracy": report["final_centralized_accuracy"],
            "best_accuracy": report["best_centralized_accuracy"],
            "last_quarter_accuracy": report["last_quarter_centralized_accuracy"],
            "bytes_up_to_50": report["bytes_to_accuracy"].get("50%", {}).get("bytes_up"),
            "rejected": report["total_rejected_updates"], "rounds": len(rounds),
            "seconds": seconds, "load": [load_before, os.getloadavg()[0]]}


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["codec"] == "none"), None)
    lines = ["| codec | MB up | up ratio vs float32 | MB down | final acc | best acc | "
             "MB up to 50 % | wall s | load |", "| --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for row in rows:
        ratio = f"{base['bytes_up'] / row['bytes_up']:.1f}x" if base else "-"
        lines.append(
            f"| {row['codec']} | {_mb(row['bytes_up'])} | {ratio} | {_mb(row['bytes_down'])} | "
            f"{100 * row['final_accuracy']:.1f} % | {100 * row['best_accuracy']:.1f} % | "
            f"{_mb(row['bytes_up_to_50'])} | {row['seconds']:.0f} | "
            f"{row['load'][0]:.0f}-{row['load'][1]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "compression-table")
    args = parser.parse_args()
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
