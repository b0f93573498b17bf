"""`fedmirasol privacy-report RUN_DIR`: epsilon-delta per client and for the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "privacy-report", help="print a run's privacy ledger: epsilon-delta per client",
        description="Summarize RUN_DIR/privacy-ledger.jsonl: per client the rounds it trained, "
        "its total DP-SGD steps, noise multiplier, sampling rate, epsilon at delta and the "
        "budget left; writes RUN_DIR/plots/privacy-epsilon.png. For an audit run "
        "(`fedmirasol privacy-audit`) also the audit: the epsilon lower bound beside the "
        "accountant's epsilon.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.privacy import ledger
    from fedmirasol.privacy.audit import report as audit_report
    from fedmirasol.runs.privacy_plots import PLOT_FILE, plot_epsilon
    from fedmirasol.privacy.report import format_table, run_summary

    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"run directory {args.run_dir} does not exist")
    summary = run_summary(args.run_dir)
    audit = audit_report.read(args.run_dir)
    if audit is not None:
        summary["audit"] = audit_report.headline(audit)
    if not args.no_plot:
        summary["plot"] = str(plot_epsilon(ledger.read(args.run_dir),
                                           args.run_dir / "plots" / PLOT_FILE))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        if audit is not None:
            print(audit_report.format_section(audit))
        if "plot" in summary:
            print(f"plot: {summary['plot']}")
    return 0
