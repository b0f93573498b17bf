"""The `fedmirasol` command: one subcommand module per job, registered below."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Each module defines `register(subparsers)`, adding its subcommand(s) with a `func` default
# that takes the parsed arguments and returns an exit code.
COMMAND_MODULES = (
    "fedmirasol.cli.model_cmd",
    "fedmirasol.cli.train_cmd",
    "fedmirasol.cli.data_cmd",
    "fedmirasol.cli.simulate_cmd",
    "fedmirasol.cli.report_cmd",
    "fedmirasol.cli.privacy_report_cmd",
    "fedmirasol.cli.certs_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmirasol",
        description="Federated, privacy-preserving training of the Mirasol audio-video-text model.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError) as error:
        print(f"fedmirasol {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
