"""Client dropout under secure aggregation: 30 % of the clients vanish in every round.

A federated run with `secagg.enabled` over the in-process Grid (`fedmirasol.testing.local_grid`:
the real ClientApp and the real SecAgg+ stages, one client at a time) in which, every round,
round(0.3 x clients) clients drawn at random vanish from one stage of the protocol on (keys,
shares, masking, the survivor-set signatures, unmasking: each stage in turn, in a shuffled
order). Afterwards `fedmirasol.testing.dropout.check_secure_means` recomputes each
participant's update in the clear from the run config and compares their weighted mean with
the global model's move in every completed round; a failed round must name its reason and keep
the model.

    python benchmarks/secagg_dropout.py [--clients 10] [--rounds 20] [--fraction 0.3]
        [--set key=value ...]

Prints one line per round and a summary (Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# The protocol, not the accuracy, is measured: small client datasets keep the 20 rounds (and
# the recomputation of every participant's update) short.
DEFAULTS = {"secagg.enabled": True, "data.clips-per-client": 16, "client.local-epochs": 1,
            "client.threads": 1, "output.plots": False}
FIRST_NODE = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0, help="the draw of who vanishes")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--check", type=Path, metavar="RUN_DIR",
                        help="only check a run this script made (same --clients, --rounds, "
                             "--fraction and --seed)")
    args = parser.parse_args()

    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.config import load_config
    from fedmirasol.engines.apps import build_client_app
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.secagg.identity import provision
    from fedmirasol.secagg.protocol import action
    from fedmirasol.server.loop import FederatedRun
    from fedmirasol.testing.dropout import check_secure_means, drop_each_round
    from fedmirasol.testing.local_grid import LocalGrid

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    settings = DEFAULTS | {"num-rounds": args.rounds, "data.num-clients": args.clients}
    config = load_config(None, [*(f"{k}={json.dumps(v)}" for k, v in settings.items()),
                                *args.overrides])
    grid = LocalGrid(build_client_app(identities=provision(args.clients)),
                     {FIRST_NODE + pid: {"partition-id": pid} for pid in range(args.clients)})
    plan = drop_each_round(grid, args.rounds, args.fraction, args.seed)
    if args.check:
        run_dir = args.check
    else:
        run_dir = rundir.create(tempfile.mkdtemp(prefix="secagg-dropout-"), "dropout")
        rundir.write_config(run_dir, config)
        FederatedRun(grid, config, run_dir).run()
    started = time.perf_counter()
    checks = check_secure_means(run_dir, plan)
    check_seconds = time.perf_counter() - started
    durations = {r["round"]: r.get("duration_s", 0.0) for r in rundir.read_metrics(run_dir)}

    print("| round | vanished (partitions) | from stage | in the sum | outcome | "
          "max abs error / quantization step | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in checks:
        outcome = "completed" if c.failure is None else f"failed: {c.failure}"
        error = "-" if c.max_error is None else f"{c.max_error:.2e} / {c.step:.2e}"
        print(f"| {c.server_round} | {[n - FIRST_NODE for n in c.dropout.nodes]} | "
              f"{action(c.dropout.stage)} | {len(c.participants)} | {outcome} | {error} | "
              f"{durations[c.server_round]:.1f} |")
    completed = [c for c in checks if c.failure is None]
    print(f"\n{len(completed)} of {len(checks)} rounds completed, "
          f"{len(checks) - len(completed)} failed with a named reason; every check holds: "
          f"{all(c.ok for c in checks)}; largest error in a completed round "
          f"{max((c.max_error for c in completed), default=float('nan')):.2e} "
          f"(one quantization step {checks[0].step:.2e}); rounds {sum(durations.values()):.0f} s, "
          f"check {check_seconds:.0f} s, load {os.getloadavg()[0]:.1f}; run directory "
          f"{Path(run_dir)}")


if __name__ == "__main__":
    main()
