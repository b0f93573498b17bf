"""What fedmirasol's simulation costs beyond training itself.

The same local steps for 100 clients (10 sampled per round, tiny model) run

  (a) through `fedmirasol simulate` (Flower's simulation engine, Ray, messages, validation,
      per-round checkpoints, run directory), with the work (b) does not do switched off by
      config keys: federated evaluation (`strategy.fraction-evaluate=0`), centralized
      evaluation (`server.evaluate-every=0`) and the end-of-run plots (`output.plots=false`);
  (b) as a plain PyTorch loop in one process: the same sampled clients (read from (a)'s
      metrics), the same data, the same seeded local training, then the weighted average.

Both get the same compute: (a) trains one virtual client at a time with one torch thread,
(b) runs with one torch thread (`--workers N` gives (a) N parallel clients and (b) N threads).
Both are timed from the call that starts them to its return, in a process that has imported
fedmirasol already: (a) includes starting and stopping Ray and the client process (its
imports), (b) does not need either.

Prints, as JSON, the wall-clock seconds of both, the ratio a/b (target: at most 1.2), each
round's seconds on both sides ((a): `duration_s` in metrics.jsonl; its round 1 includes the
client process's start), (a)'s seconds outside its rounds (Ray start-up and shutdown, run
directory, final model and report), and the load average before and after.

    python benchmarks/simulation_overhead.py [--rounds 10] [--local-epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def plain_loop(config: dict, sampled_per_round: list[list[int]], threads: int
               ) -> tuple[float, dict, list[float]]:
    """(b): the same client updates and FedAvg in one process; returns (seconds, model,
    seconds per round)."""
    from fedmirasol.task import data as client_data
    from fedmirasol.core.seeds import seed_for
from fedmirasol.task.model import init_model
    from fedmirasol.core.parameters import ParameterSplit, delta, load_state, model_state
    from fedmirasol.training.loop import train_epochs

    started = time.perf_counter()
    torch.set_num_threads(threads)
    client = config.client
    model = init_model(config)
    split = ParameterSplit.from_model(model, "")
    global_shared = model_state(model, split.shared)
    per_round = []
    for server_round, sampled in enumerate(sampled_per_round, start=1):
        round_started = time.perf_counter()
        updates, weights = [], []
        for pid in sampled:
            data = client_data.client_data(config, pid)
            load_state(model, global_shared)
            seed = seed_for(config.seed, server_round, pid)
            torch.manual_seed(seed)
            optimizer = torch.optim.Adam(model.parameters(), lr=client["lr"])
            train_epochs(model, client_data.loader(data.train, client["batch-size"],
                                                   shuffle=True, seed=seed),
                         optimizer, epochs=client["local-epochs"], device="cpu")
            updates.append(delta(model_state(model, split.shared), global_shared))
            weights.append(len(data.train))
        total = sum(weights)
        global_shared = {k: global_shared[k] + sum(w / total * u[k] for u, w in
                                                   zip(updates, weights))
                         for k in global_shared}
        per_round.append(time.perf_counter() - round_started)
    return time.perf_counter() - started, global_shared, per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clips-per-client", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel virtual clients in (a), torch threads in (b)")
    args = parser.parse_args()

    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, [
            "name='overhead'", f"num-rounds={args.rounds}",
            f"data.num-clients={args.clients}", f"data.clips-per-client={args.clips_per_client}",
            "data.partitioner='iid'", "data.test-clips=8", "model.num-frames=8",
            f"client.local-epochs={args.local_epochs}",
            f"strategy.fraction-train={args.per_round / args.clients}",
            "strategy.fraction-evaluate=0.0", "server.evaluate-every=0", "output.plots=false",
            f"simulation.max-parallel-clients={args.workers}", f"output.runs-dir='{tmp}'",
        ])
        started = time.perf_counter()
        run = simulate(config, progress=None)
        simulated = time.perf_counter() - started
        records = rundir.read_metrics(run)
        sampled = [r["sampled"] for r in records if r["round"] > 0]
        durations = [r["duration_s"] for r in records if r["round"] > 0]
        assert all(len(r["participants"]) == args.per_round for r in records if r["round"] > 0)
        federated_model = rundir.latest_checkpoint(run).global_shared

    # (b) renders its clients' clips itself, as the simulated clients did.
    plain, plain_model, plain_rounds = plain_loop(config, sampled, args.workers)
    drift = max(float(np.abs(federated_model[k] - plain_model[k]).max()) for k in plain_model)
    print(json.dumps({
        "clients": args.clients, "per_round": args.per_round, "rounds": args.rounds,
        "local_epochs": args.local_epochs, "clips_per_client": args.clips_per_client,
        "workers": args.workers,
        "simulation_seconds": round(simulated, 2), "plain_loop_seconds": round(plain, 2),
        "ratio": round(simulated / plain, 3),
        # Round 1 of (a) includes the client process's start (imports) on first contact.
        "simulation_round_seconds": [round(d, 2) for d in durations],
        "plain_loop_round_seconds": [round(d, 2) for d in plain_rounds],
        "simulation_outside_rounds_seconds": round(simulated - sum(durations), 2),
        "max_abs_difference_between_final_models": drift,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min_before_after": [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)],
    }, indent=2))


if __name__ == "__main__":
    main()
