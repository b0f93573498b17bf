"""Personalization methods side by side on `simulations/personalization.toml`.

Runs the same federation (pathological label skew, 2 classes per client) once per method and
prints, per method, the mean client accuracy of the global model, of each client's personalized
model and of the global model after local adaptation (adapt-steps fine-tuning steps), final
round and mean over the last quarter of the rounds, as a Markdown table and JSON.

    python benchmarks/personalization_compare.py [--rounds 8] [--set key=value ...]
        [--methods none,fedper,fedrep,ditto,reptile,perfedavg] [--out results.json]
        [--dp-epsilon 8]

``--dp-epsilon EPS`` runs every method under sample-level DP-SGD calibrated to end the run at
epsilon <= EPS (delta 1e-5) per client, every pass over the training data (FedRep's phases,
Ditto's personal model, the meta-learning steps, local adaptation) charged to the one
accountant; the clients' validation splits are declared non-private evaluation splits
(``site-privacy.eval-split = "public"``), so the accuracies are exact rather than noised.

Acceptance reference: FedPer's and Ditto's personalized accuracy against FedAvg's ("none")
global-model accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "simulations" / "personalization.toml"
COLUMNS = (("global", "mean_client_accuracy"), ("personalized", "mean_client_personal_accuracy"),
           ("adapted", "mean_client_adapted_accuracy"))


def run_method(method: str, overrides: list[str], runs_dir: str) -> dict:
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate

    config = load_config(CONFIG, [*overrides, f"personalization.method='{method}'",
                                  f"output.runs-dir='{runs_dir}'", f"name='pz-{method}'"])
    started = time.perf_counter()
    run = simulate(config, progress=None)
    report = rundir.read_report(run)
    row = {"method": method, "seconds": time.perf_counter() - started,
           # replies lost (a crashed or out-of-memory client): its accuracies are then missing
           "rejected_updates": report.get("total_rejected_updates"),
           "evaluate_rejected": sum(len(r.get("evaluate_rejected", []))
                                    for r in rundir.read_metrics(run))}
    for label, key in COLUMNS:
        row[f"{label}_final"] = report.get(f"final_{key}")
        row[f"{label}_last_quarter"] = report.get(f"last_quarter_{key}")
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| method | global (final / last quarter) | personalized | adapted | seconds |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"{_pct(row[f'{label}_final'])} / {_pct(row[f'{label}_last_quarter'])}"
                 for label, _ in COLUMNS]
        lines.append(f"| {row['method']} | {' | '.join(cells)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="none,fedper,fedrep,ditto,reptile,perfedavg")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dp-epsilon", type=float, default=0.0,
                        help="> 0: every method under DP-SGD at this epsilon per client")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    overrides = list(args.overrides) + ([f"num-rounds={args.rounds}"] if args.rounds else [])
    if args.dp_epsilon > 0:
        overrides += ["privacy.enabled=true", f"privacy.target-epsilon={args.dp_epsilon}",
                      "site-privacy.eval-split='public'"]
    rows = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for method in args.methods.split(","):
            rows.append(run_method(method.strip(), overrides, runs_dir))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
