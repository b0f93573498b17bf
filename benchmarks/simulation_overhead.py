"""What fedmirasol's simulation costs beyond training itself, at two workloads.

The same local steps for 100 clients, 10 sampled per round, run

  (a) through `simulate()` (Flower's simulation engine on Ray, messages, reply checks, per-round
      checkpoints, run directory), with the work (b) does not do switched off by config keys:
      federated evaluation (`strategy.fraction-evaluate=0`), centralized evaluation
      (`server.evaluate-every=0`) and the end-of-run plots (`output.plots=false`);
  (b) as a plain PyTorch loop: the same sampled clients (read from (a)'s metrics), the same data,
      the same seeded local training, then the weighted average.

Workloads: `tiny` (tiny Mirasol, 8 frames, 20 clips a client, 4 local epochs, 10 rounds) and
`realistic` (the `small` config, 20 clips a client, 1 local epoch, 20 rounds).

Both arms get the same cores: with `--workers N`, (a) runs N virtual clients at once with one
torch thread each and (b) trains the round's clients in N worker processes (forked from this
one, after the imports) with one thread each. Both are timed from the call that starts them to
its return, in a process that has imported fedmirasol: (a)'s time includes starting and
stopping Ray and its client processes (their imports), unless `--ray-address` attaches it to a
running cluster (`simulation.ray-address`; start one with `ray start --head`).

Prints a Markdown table (one row per workload): fixed cost of (a) (call to the first round's
start, last round's end to return), mean seconds a round over rounds 2..N on both sides and
their ratio (steady state), whole-run seconds and their ratio; then the per-round seconds, the
seconds the driver process spent on the CPU (Flower's engine threads and the server: work
that competes with the clients for the cores), the largest difference between the two final
models, and the load average before and after.

    python benchmarks/simulation_overhead.py [--workloads tiny realistic] [--workers 1]
        [--rounds N] [--ray-address auto]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from typing import Any

import numpy as np
import torch

WORKLOADS = {
    "tiny": {"model": ["model.name='tiny'", "model.num-frames=8"], "clips": 20, "epochs": 4,
             "rounds": 10},
    "realistic": {"model": ["model.name='small'"], "clips": 20, "epochs": 1, "rounds": 20},
}
CLIENTS, PER_ROUND = 100, 10


def _train_client(config: Any, server_round: int, pid: int,
                  global_shared: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """One client's local training from `global_shared`: (its update, its example count)."""
    from fedmirasol.core.parameters import ParameterSplit, delta, load_state, model_state
    from fedmirasol.core.seeds import seed_for
    from fedmirasol.task import data as client_data
    from fedmirasol.task.model import init_model
    from fedmirasol.training.loop import train_epochs

    model = _MODELS.get(config)
    if model is None:
        model = _MODELS[config] = init_model(config)
    split = ParameterSplit.from_model(model, "")
    client = config.client
    data = client_data.client_data(config, pid)
    load_state(model, global_shared)
    seed = seed_for(config.seed, server_round, pid)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=client.lr)
    train_epochs(model, client_data.loader(data.train, client.batch_size, shuffle=True,
                                           seed=seed),
                 optimizer, epochs=client.local_epochs, device="cpu")
    return delta(model_state(model, split.shared), global_shared), len(data.train)


_MODELS: dict[Any, torch.nn.Module] = {}  # one model per process, as a virtual client keeps


def _worker_init() -> None:
    torch.set_num_threads(1)


def plain_loop(config: Any, sampled_per_round: list[list[int]], workers: int
               ) -> tuple[float, dict[str, np.ndarray], list[float]]:
    """(b): the same client updates and FedAvg; returns (seconds, final model, seconds a
    round). `workers` > 1: the round's clients train in that many forked processes."""
    from fedmirasol.core.parameters import ParameterSplit, model_state
    from fedmirasol.task.model import init_model

    started = time.perf_counter()
    torch.set_num_threads(1)
    model = init_model(config)
    global_shared = model_state(model, ParameterSplit.from_model(model, "").shared)
    pool = (multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
            if workers > 1 else None)
    per_round = []
    try:
        for server_round, sampled in enumerate(sampled_per_round, start=1):
            round_started = time.perf_counter()
            jobs = [(config, server_round, pid, global_shared) for pid in sampled]
            results = pool.starmap(_train_client, jobs) if pool else \
                [_train_client(*job) for job in jobs]
            total = sum(n for _, n in results)
            global_shared = {k: global_shared[k] + sum(n / total * u[k] for u, n in results)
                             for k in global_shared}
            per_round.append(time.perf_counter() - round_started)
    finally:
        if pool:
            pool.terminate()
    return time.perf_counter() - started, global_shared, per_round


def simulated(config: Any) -> dict[str, Any]:
    """(a): run `config` through `simulate()`; its timings, sampled clients and final model."""
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir

    ends: dict[int, float] = {}

    def progress(record: dict[str, Any]) -> None:
        if "round" in record:
            ends[int(record["round"])] = time.perf_counter()

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    run = simulate(config, progress=progress)
    total = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    records = [r for r in rundir.read_metrics(run) if r["round"] > 0]
    assert all(len(r["participants"]) == PER_ROUND for r in records), "a client failed"
    durations = [r["duration_s"] for r in records]
    first_start = ends[1] - durations[0]
    return {
        "total": total, "rounds": durations, "sampled": [r["sampled"] for r in records],
        "model": rundir.latest_checkpoint(run).global_shared,
        "start_to_first_round": first_start - started,
        "last_round_to_exit": started + total - ends[len(records)],
        "driver_cpu": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
    }


def run_workload(name: str, args: argparse.Namespace, runs_dir: str) -> dict[str, Any]:
    from fedmirasol.config import load_config

    spec = WORKLOADS[name]
    rounds = args.rounds or spec["rounds"]
    config = load_config(None, [
        f"name='overhead-{name}'", f"num-rounds={rounds}", *spec["model"],
        f"data.num-clients={CLIENTS}", f"data.clips-per-client={spec['clips']}",
        "data.partitioner='iid'", "data.test-clips=8", f"client.local-epochs={spec['epochs']}",
        "client.threads=1", f"strategy.fraction-train={PER_ROUND / CLIENTS}",
        "strategy.fraction-evaluate=0.0", "server.evaluate-every=0", "output.plots=false",
        f"simulation.max-parallel-clients={args.workers}",
        f"simulation.ray-address='{args.ray_address}'", f"output.runs-dir='{runs_dir}'",
    ])
    sim = simulated(config)
    plain, plain_model, plain_rounds = plain_loop(config, sim["sampled"], args.workers)
    steady_sim, steady_plain = np.mean(sim["rounds"][1:]), np.mean(plain_rounds[1:])
    return {
        "workload": name, "rounds": rounds, "workers": args.workers,
        "fixed_start_s": sim["start_to_first_round"], "fixed_exit_s": sim["last_round_to_exit"],
        "steady_sim_s": steady_sim, "steady_plain_s": steady_plain,
        "steady_ratio": steady_sim / steady_plain,
        "total_sim_s": sim["total"], "total_plain_s": plain, "total_ratio": sim["total"] / plain,
        "sim_round_s": [round(d, 2) for d in sim["rounds"]],
        "plain_round_s": [round(d, 2) for d in plain_rounds],
        "driver_cpu_s": round(sim["driver_cpu"], 1),
        "max_abs_model_difference": max(float(np.abs(sim["model"][k] - plain_model[k]).max())
                                        for k in plain_model),
    }


def table(rows: list[dict[str, Any]], load: tuple[float, float], ray_address: str) -> str:
    lines = ["| workload | fixed cost: start / exit (s) | steady round: simulation / plain "
             "(s) | steady ratio | whole run: simulation / plain (s) | whole-run ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['workload']} ({r['rounds']} rounds, {r['workers']} worker(s)) | "
                     f"{r['fixed_start_s']:.1f} / {r['fixed_exit_s']:.1f} | "
                     f"{r['steady_sim_s']:.2f} / {r['steady_plain_s']:.2f} | "
                     f"**{r['steady_ratio']:.2f}** | {r['total_sim_s']:.1f} / "
                     f"{r['total_plain_s']:.1f} | **{r['total_ratio']:.2f}** |")
    where = f"Ray cluster at {ray_address!r}" if ray_address else "a private Ray per run"
    lines.append("")
    lines.append(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                 f"{where}; load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}; "
                 f"{time.strftime('%Y-%m-%d')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS),
                        default=["tiny", "realistic"])
    parser.add_argument("--workers", type=int, default=1,
                        help="virtual clients at once in (a), worker processes in (b)")
    parser.add_argument("--rounds", type=int, default=0, help="0: the workload's own")
    parser.add_argument("--ray-address", default="",
                        help="attach (a) to this Ray cluster (simulation.ray-address)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            rows.append(run_workload(name, args, tmp))
    print(table(rows, (load_before, os.getloadavg()[0]), args.ray_address))
    print()
    print(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1, default=float))


if __name__ == "__main__":
    main()
