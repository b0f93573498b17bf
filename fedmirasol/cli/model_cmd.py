"""`fedmirasol model info`: parameter counts per component."""

from __future__ import annotations

import argparse
import json

from fedmirasol.cli import model_config_name
from fedmirasol.models.config import NAMED_CONFIGS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model configs")
    model_commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = model_commands.add_parser(
        "info",
        help="parameter count per component and in total",
        description="Build the model on the meta device (no memory) and count its parameters.",
    )
    info.add_argument("config", help=f"config name: {', '.join(NAMED_CONFIGS)}")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from fedmirasol.models import build_model, get_config
    from fedmirasol.models.summary import describe, parameter_table

    config = get_config(model_config_name(args.config, "CONFIG"))
    table = parameter_table(build_model(config, device="meta"))
    if args.json:
        print(json.dumps({"config": config.name, "parameters": table}, indent=2))
        return 0
    print(f"{config.name}: {describe(config)}")
    for component, count in table.items():
        print(f"  {component:<16} {count:>15,}")
    return 0
