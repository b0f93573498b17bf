"""Label efficiency of federated VideoMAE pre-training.

1. Federated VideoMAE pre-training on the clients' clips, labels unused
   (`simulations/videomae.toml`, `--pretrain-rounds` rounds; `--dp`: DP-SGD at epsilon <= 8 per
   client over the pre-training).
2. Federated fine-tuning of the classifier from its final model with `--label-fraction` of each
   client's training clips labelled (`simulations/quickstart.toml` + `data.label-fraction`),
   `--rounds` rounds.
3. The same fine-tuning from scratch: same federation, same labelled clips, same rounds.

Prints the pre-training's masked-patch loss on the test clips per round and the two
fine-tuning runs' centralized accuracy (final, best, mean of the last quarter), as JSON lines
and a Markdown table.

    python benchmarks/label_efficiency.py [--pretrain-rounds 20] [--rounds 20]
        [--label-fraction 0.1] [--dp] [--set key=value ...] [--pretrain-set key=value ...]
        [--out results.json]

Acceptance reference: fine-tuning from the VideoMAE checkpoint beats from scratch by >= 5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "simulations" / "videomae.toml"
FINE_TUNE = ROOT / "simulations" / "quickstart.toml"
DP = ["privacy.enabled=true", "privacy.target-epsilon=8.0", "privacy.delta=1e-5"]


def simulate(config_file: Path, overrides: list[str]) -> Path:
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate as run

    return run(load_config(config_file, overrides), progress=None)


def metrics(run: Path) -> list[dict]:
    from fedmirasol.runs import run_dir as rundir

    return rundir.read_metrics(run)


def accuracy_row(label: str, run: Path, seconds: float) -> dict:
    from fedmirasol.runs import run_dir as rundir

    report = rundir.read_report(run)
    return {"run": label, "final": report["final_centralized_accuracy"],
            "best": report["best_centralized_accuracy"],
            "last_quarter": report["last_quarter_centralized_accuracy"], "seconds": seconds}


def timed(config_file: Path, overrides: list[str]) -> tuple[Path, float]:
    started = time.perf_counter()
    run = simulate(config_file, overrides)
    return run, time.perf_counter() - started


def markdown(pretrain: dict, rows: list[dict]) -> str:
    losses = ", ".join(f"{loss:.3f}" for loss in pretrain["test_loss_per_round"])
    lines = [f"VideoMAE pre-training ({pretrain['rounds']} rounds, {pretrain['seconds']:.0f} s"
             + (f", worst client epsilon {pretrain['epsilon']:.2f}" if "epsilon" in pretrain
                else "") + f"): masked-patch loss on the test clips per round: {losses}", "",
             "| fine-tuning | final | best | last quarter | seconds |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['run']} | {100 * row['final']:.1f} | {100 * row['best']:.1f} | "
                     f"{100 * row['last_quarter']:.1f} | {row['seconds']:.0f} |")
    gain = rows[0]["final"] - rows[1]["final"]
    lines.append(f"\nfinal accuracy, pre-trained - scratch: {100 * gain:+.1f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-rounds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20, help="fine-tuning rounds")
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument("--dp", action="store_true", help="pre-train under DP-SGD (epsilon 8)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="key=value for every run (e.g. simulation.max-parallel-clients=1)")
    parser.add_argument("--pretrain-set", action="append", default=[],
                        help="key=value for the pre-training run only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as runs_dir:
        common = [*args.overrides, f"output.runs-dir='{runs_dir}'"]
        pre_run, seconds = timed(PRETRAIN, [*common, *(DP if args.dp else []),
                                            *args.pretrain_set,
                                            f"num-rounds={args.pretrain_rounds}"])
        pretrain = {"rounds": args.pretrain_rounds, "seconds": seconds, "dp": args.dp,
                    "test_loss_per_round": [r["centralized_loss"] for r in metrics(pre_run)
                                            if r.get("centralized_loss") is not None]}
        if args.dp:
            from fedmirasol.runs import run_dir as rundir

            pretrain["epsilon"] = rundir.read_report(pre_run)["privacy"]["worst_client"]["epsilon"]
        print(json.dumps({"pretrain": pretrain}), flush=True)
        fine_tune = [*common, f"num-rounds={args.rounds}",
                     f"data.label-fraction={args.label_fraction}"]
        checkpoint = pre_run / "final_model.pt"
        rows = []
        for label, extra in ((f"from VideoMAE ({'DP' if args.dp else 'non-private'})",
                              [f"pretrained.checkpoint='{checkpoint}'"]), ("from scratch", [])):
            run, seconds = timed(FINE_TUNE, [*fine_tune, *extra])
            rows.append(accuracy_row(label, run, seconds))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(pretrain, rows))
    if args.out:
        args.out.write_text(json.dumps({"pretrain": pretrain, "fine_tune": rows}, indent=2))


if __name__ == "__main__":
    main()
