"""The `fedmirasol` command: one subcommand module per job, registered below.

Registering a subcommand imports nothing heavy (no torch, flwr or ray): each module imports
what its job needs inside its `func`, so `fedmirasol --help` starts in a fraction of a second
and still works when torch is broken.

Errors: a `ConfigError` (a bad config key or value, flag, or input file; fedmirasol.errors),
a FileNotFoundError (a path the user gave is missing) and a FileExistsError (it would be
overwritten) print one line and exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from fedmirasol.errors import ConfigError, did_you_mean

# Each module defines `register(subparsers)`, adding its subcommand(s) with a `func` default
# that takes the parsed arguments and returns an exit code.
COMMAND_MODULES = (
    "fedmirasol.cli.model_cmd",
    "fedmirasol.cli.train_cmd",
    "fedmirasol.cli.data_cmd",
    "fedmirasol.cli.simulate_cmd",
    "fedmirasol.cli.report_cmd",
    "fedmirasol.cli.compare_cmd",
    "fedmirasol.cli.privacy_report_cmd",
    "fedmirasol.cli.privacy_audit_cmd",
    "fedmirasol.cli.certs_cmd",
    "fedmirasol.cli.he_cmd",
    "fedmirasol.cli.clientapp_cmd",
)

# FileNotFoundError / FileExistsError: a path the user gave is missing, or would be overwritten.
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmirasol",
        description="Federated, privacy-preserving training of the Mirasol audio-video-text model.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def model_config_name(name: str, flag: str) -> str:
    """`name` if it is a named model config, else a ConfigError naming `flag` (did you mean)."""
    from fedmirasol.models.config import NAMED_CONFIGS

    if name not in NAMED_CONFIGS:
        hint = did_you_mean(name, NAMED_CONFIGS)
        raise ConfigError(f"{flag}: unknown model config {name!r}{hint}; known: "
                          f"{', '.join(NAMED_CONFIGS)}")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fedmirasol.console import show_messages

    show_messages()
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        print(f"fedmirasol {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
