"""Federated video-text contrastive pre-training: zero-shot accuracy and retrieval, side by side.

Runs `simulations/contrastive.toml` once per variant and prints, from each run's last
centralized evaluation on the server's test clips, the zero-shot accuracy over the 8 classes
(chance 12.5 %), video->text and text->video Recall@1/5 and median rank (the distinct captions
are the text gallery), the learned temperature and the wall time:

- `mirasol`: the config as it is (tiny Mirasol, client batch size 8, in-batch negatives);
- `latefusion`: the late-fusion model (TimeSformer + AST, `latefusion-tiny`);
- `batch4`, `batch16`, `batch32`: the client batch size, i.e. the in-batch negatives per clip;
- `dp`: DP-SGD at epsilon <= 8 per client (delta 1e-5), each clip against 64 fixed public
  negatives (in-batch negatives are not DP-compatible).

    python benchmarks/contrastive_retrieval.py [--variants mirasol,latefusion,batch4,batch16,dp]
        [--rounds 20] [--set key=value ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "simulations" / "contrastive.toml"
VARIANTS = {
    "mirasol": [],
    "latefusion": ["model.name='latefusion-tiny'"],
    "batch4": ["client.batch-size=4"],
    "batch16": ["client.batch-size=16"],
    "batch32": ["client.batch-size=32"],
    "dp": ["pretrain.negatives='public'", "privacy.enabled=true", "privacy.target-epsilon=8.0",
           "privacy.delta=1e-5"],
}
SHOWN = ("zero_shot_accuracy", "v2t_r1", "v2t_r5", "v2t_median_rank", "t2v_r1", "t2v_r5",
         "t2v_median_rank", "temperature")


def run_variant(name: str, overrides: list[str], runs_dir: str) -> dict:
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir

    config = load_config(CONFIG, [*overrides, *VARIANTS[name], f"output.runs-dir='{runs_dir}'",
                                  f"name='contrastive-{name}'"])
    started = time.perf_counter()
    run = simulate(config, progress=None)
    report = rundir.read_report(run)
    initial = rundir.read_metrics(run)[0]
    row = {"variant": name, "seconds": time.perf_counter() - started,
           "rounds": report["rounds_completed"],
           "initial_zero_shot_accuracy": initial.get("centralized_zero_shot_accuracy"),
           **{key: report["final_centralized_objective"].get(key) for key in SHOWN}}
    if "privacy" in report:
        row["epsilon"] = report["privacy"]["worst_client"]["epsilon"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | zero-shot (initial) | v2t R@1 / R@5 / median | t2v R@1 / R@5 / median "
             "| temperature | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        name = r["variant"] + (f" (epsilon {r['epsilon']:.2f})" if "epsilon" in r else "")
        lines.append(
            f"| {name} | {100 * r['zero_shot_accuracy']:.1f} % "
            f"({100 * r['initial_zero_shot_accuracy']:.1f} %) | "
            f"{100 * r['v2t_r1']:.1f} / {100 * r['v2t_r5']:.1f} / {r['v2t_median_rank']:.0f} | "
            f"{100 * r['t2v_r1']:.1f} / {100 * r['t2v_r5']:.1f} / {r['t2v_median_rank']:.0f} | "
            f"{r['temperature']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def run_all(variants: list[str], overrides: list[str]) -> list[dict]:
    """Each variant's run, one after the other, in a temporary runs directory."""
    rows = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for name in variants:
            rows.append(run_variant(name, overrides, runs_dir))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="mirasol,latefusion,batch4,batch16,dp",
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rounds = [f"num-rounds={args.rounds}"] if args.rounds else []
    rows = run_all([v.strip() for v in args.variants.split(",")], [*args.overrides, *rounds])
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
