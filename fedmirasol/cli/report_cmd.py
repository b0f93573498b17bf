"""`fedmirasol report RUN_DIR`: rebuild a run's plots and print its summary table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedmirasol.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="rebuild a run directory's plots and print its summary",
        description="Rebuild the PNG plots of a simulation run directory from metrics.jsonl "
        "and print a per-round summary table.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.runs.plots import plot_run
    from fedmirasol.runs.report import build_report, summary_table

    rundir.read_config(args.run_dir)  # a clear error when this is not a run directory
    if not any(record.get("round", 0) > 0 for record in rundir.read_metrics(args.run_dir)):
        raise ConfigError(f"{args.run_dir} has no completed rounds in {rundir.METRICS_FILE}: "
                          f"the run stopped before round 1 ended, so there is nothing to "
                          f"report (its config.json says what it was run with)")
    report = rundir.read_report(args.run_dir) | build_report(args.run_dir)
    rundir.write_report(args.run_dir, report)
    paths = plot_run(args.run_dir)
    print(summary_table(args.run_dir))
    summary = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
    print(json.dumps(summary, indent=2, sort_keys=True))
    for path in paths:
        print(f"plot: {path}")
    return 0
