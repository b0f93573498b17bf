"""`fedmirasol privacy-audit`: train with audit canaries and measure an epsilon lower bound."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "privacy-audit",
        help="run an empirical privacy audit: canaries give a lower bound on epsilon",
        description="Run a simulation with audit canaries (audit.* keys; simulations/"
        "audit.toml): canary clips in the clients' training data (audit.level = 'sample', "
        "DP-SGD) or canary clients in the noised sum (audit.level = 'client'), each included "
        "with probability 1/2 and its bit kept secret until training ends. Writes "
        "RUN_DIR/audit.json (the epsilon lower bound at audit.confidence beside the "
        "accountant's epsilon) and RUN_DIR/plots/audit-scores.png. The trained model holds "
        "canaries and is not for use.")
    parser.add_argument("--config", type=Path, help="simulation config TOML with an [audit] "
                        "section (default: the built-in quickstart with the audit defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. "
                        "--set audit.canaries=128 --set privacy.target-epsilon=4")
    parser.add_argument("--json", action="store_true",
                        help="print audit.json's headline figures as JSON")
    parser.set_defaults(func=run)


HEADLINE = ("level", "unit", "epsilon-lower-bound", "accountant-epsilon", "epsilon-estimate",
            "confidence", "delta", "m", "r", "v", "best-possible-lower-bound",
            "exceeds-accountant", "wall-clock-seconds")


def run(args: argparse.Namespace) -> int:
    from fedmirasol.config import load_config
    from fedmirasol.engines.audit import check_auditable, privacy_audit
    from fedmirasol.privacy.audit.report import format_section

    config = load_config(args.config, args.overrides)
    check_auditable(config)  # a config an audit cannot use fails before Ray starts
    run_dir, table = privacy_audit(config)
    if args.json:
        print(json.dumps({key: table.get(key) for key in HEADLINE}, indent=2))
    else:
        print(format_section(table))
    print(f"audit: {run_dir / 'audit.json'}")
    print(f"plot: {run_dir / 'plots' / 'audit-scores.png'}")
    print(f"run directory: {run_dir}")
    return 1 if table.get("exceeds-accountant") else 0
