"""`fedmirasol compare RUN_DIR [RUN_DIR ...]`: runs side by side, a table and a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


DESCRIPTION = ("Put run directories side by side: print a table (rounds, final and best "
               "accuracy, MB sent, wall time, worst client's epsilon) and write it as CSV, and "
               "plot the runs' per-round curves in one PNG. Each run is labelled by the config "
               "keys whose values differ between the runs.")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", description=DESCRIPTION,
                                   help="compare run directories: a table and a PNG")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--metric", default="centralized_accuracy",
                        help="the per-round metric to plot: a key of metrics.jsonl (e.g. "
                        "federated_accuracy, train_loss, bytes_up) or worst_client_epsilon "
                        "(default: centralized_accuracy)")
    parser.add_argument("--out", type=Path, default=Path("compare.png"), metavar="PNG",
                        help="where the plot goes; the table goes beside it as .csv "
                        "(default: compare.png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.errors import ConfigError
    from fedmirasol.runs.compare import (
        check_metric, format_table, load_runs, plot_comparison, write_csv)

    if args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out {args.out}: the plot is a PNG; give a path ending in .png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.run_dirs)
    check_metric(runs, args.metric)
    rows = [run.summary() for run in runs]
    print(format_table(rows))
    print(f"table: {write_csv(rows, args.out.with_suffix('.csv'))}")
    print(f"plot: {plot_comparison(runs, args.metric, args.out)}")
    return 0
