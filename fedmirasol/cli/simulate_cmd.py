"""`fedmirasol simulate`: run the Flower app in Flower's simulation engine."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a federated simulation (default: 10 non-IID clients, tiny Mirasol, FedAvg)",
        description="Run fedmirasol's Flower app in Flower's simulation engine (Ray backend) "
        "and write a run directory under runs/.",
    )
    parser.add_argument("--config", type=Path, help="simulation config TOML "
                        "(default: the built-in quickstart, same as simulations/quickstart.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. "
                        "--set strategy.name=fedprox --set strategy.proximal-mu=0.01")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run after its last completed round")
    parser.add_argument("--baseline", action="store_true",
                        help="also train the same model centrally on the union of the clients' "
                        "data and record its accuracy in report.json")
    parser.add_argument("--baseline-epochs", type=int, metavar="N",
                        help="epochs of the centralized baseline (default: num-rounds x "
                        "local-epochs, the passes each client's data gets)")
    parser.add_argument("--no-pretrain", action="store_true",
                        help="start from scratch: clear the config's pretrained.* keys (no "
                        "pre-trained checkpoint is trained or loaded; the whole model trains)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.config import load_config
    from fedmirasol.errors import ConfigError

    if args.resume and (args.config or args.overrides or args.no_pretrain):
        raise ConfigError("--resume continues a run with its own config; drop "
                         "--config/--set/--no-pretrain")
    config = None
    if not args.resume:
        from fedmirasol.pretrained.checkpoint import with_digest
        from fedmirasol.pretrained.public import prepare
        from fedmirasol.task import data as task_data

        # a `public:` pretrained.checkpoint recipe is trained once and cached, then reused
        overrides = prepare(args.config, args.overrides, pretrain=not args.no_pretrain)
        config = with_digest(load_config(args.config, overrides))
        if config.data.source != "site":  # a partition that cannot be made fails before Ray
            task_data.specs(config)
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.runs.report import add_to_report, summary_table
    from fedmirasol.runs.trackers import require_packages

    # a tracker whose package is missing fails here, before Ray starts
    require_packages(config if config is not None else rundir.read_config(args.resume))
    started = time.perf_counter()
    run_dir = simulate(resume=args.resume) if args.resume else simulate(config)
    elapsed = time.perf_counter() - started
    baseline = None
    if args.baseline:
        from fedmirasol.engines.centralized_baseline import centralized_baseline

        print("training the centralized baseline ...", flush=True)
        baseline = centralized_baseline(rundir.read_config(run_dir), args.baseline_epochs)
    report = add_to_report(run_dir, wall_clock_seconds=elapsed, baseline=baseline)
    print(summary_table(run_dir))
    keys = ("final_centralized_accuracy", "final_federated_accuracy",
            "final_mean_client_accuracy", "final_mean_client_personal_accuracy",
            "final_mean_client_adapted_accuracy", "decrypted_final_test_accuracy",
            "total_rejected_updates", "wall_clock_seconds",
            "centralized_baseline_accuracy")
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))
    print(f"run directory: {run_dir}")
    return 0
