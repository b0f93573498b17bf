"""Per-round time and peak memory as the federation grows: the many-clients-1k config (tiny
Mirasol, FedBN, 10 clients trained and 10 evaluated a round, per-client state on disk) at 100,
1,000 and 10,000 clients.

Each size runs in a fresh process (`simulate`, one virtual client at a time, one torch thread):
the mean server-side round time over rounds 2..N (metrics.jsonl `duration_s`), the whole run,
the driver's peak RSS (Flower's engine keeps a context for every node there; the server too)
and the largest peak RSS of a process it waited for (Ray's daemons and workers), and the
client-state files written. Prints a Markdown table with the ratio of each size to the first.

`--probe-sweep` (diagnosis only) runs every size a second time with Flower's message hand-out
thread swapped for one that is O(messages waiting) instead of O(nodes x messages stored) per
pass (see `_probe_sweep`), side by side: the difference is what that thread costs.

    python benchmarks/many_clients.py [--clients 100 1000 10000] [--rounds 4] [--probe-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _probe_sweep() -> None:
    """Diagnosis only, never how fedmirasol runs. Flower's simulation engine hands messages to
    its workers from a thread that asks every node for a message every 0.1 s
    (flwr/server/superlink/fleet/vce/vce_api.py `add_messages_to_queue`), and every ask checks
    every stored message (`InMemoryLinkState.get_message_ins`): a pass costs O(nodes x messages
    in flight), all the time. This swaps in a thread that asks only the nodes a message waits
    for (same hand-out otherwise), to measure what the round time is without that cost."""
    from flwr.server.superlink.fleet.vce import vce_api

    def waiting_nodes_only(state, queue, nodes_mapping, f_stop):  # noqa: ANN001, ANN202
        while not f_stop.is_set():
            with state.lock:
                waiting = {m.metadata.dst_node_id for m in state.message_ins_store.values()
                           if m.metadata.delivered_at == ""}
            for node_id in waiting & nodes_mapping.keys():
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(0.1)

    vce_api.add_messages_to_queue = waiting_nodes_only


def _one(clients: int, rounds: int, runs: str, probe: bool = False) -> dict:
    """In the child process: one simulation of `clients` clients."""
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir

    if probe:
        _probe_sweep()
    fraction = 10 / clients
    config = load_config(ROOT / "simulations" / "many-clients-1k.toml", [
        f"data.num-clients={clients}", f"num-rounds={rounds}",
        f"strategy.fraction-train={fraction}", f"strategy.fraction-evaluate={fraction}",
        "client.threads=1", "simulation.max-parallel-clients=1", "output.plots=false",
        f"output.runs-dir='{runs}'"])
    started = time.perf_counter()
    run = simulate(config, progress=None)
    whole = time.perf_counter() - started
    durations = [r["duration_s"] for r in rundir.read_metrics(run)[1:]]
    return {"clients": clients, "probe": probe, "round_s": durations, "whole_s": whole,
            "sampled": [len(r["sampled"]) for r in rundir.read_metrics(run)[1:]],
            "state_files": len(list((run / "client-state").glob("client-*.safetensors"))),
            "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "child_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--probe-sweep", action="store_true",
                        help="also run each size with Flower's hand-out thread swapped for "
                             "an O(messages waiting) one (diagnosis only)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.rounds, args.runs, args.probe_sweep)))
        return
    before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for clients in args.clients:
            for probe in ([False, True] if args.probe_sweep else [False]):
                done = subprocess.run(
                    [sys.executable, __file__, "--one", str(clients), "--rounds",
                     str(args.rounds), "--runs", runs, *(["--probe-sweep"] if probe else [])],
                    capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if done.returncode != 0:
                    raise SystemExit(f"{clients} clients failed:\n{done.stderr[-3000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    def steady(row: dict) -> float:
        later = row["round_s"][1:] or row["round_s"]
        return sum(later) / len(later)

    print("| clients | hand-out thread | seconds per round (1..N) | steady round 2..N (s) | vs "
          "first | whole run (s) | driver peak RSS (MiB) | vs first | largest child peak RSS "
          "(MiB) | state files |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        first = next(r for r in rows if r["probe"] == row["probe"])
        print(f"| {row['clients']:,} | {'waiting nodes only' if row['probe'] else 'Flower'} | "
              f"{', '.join(f'{d:.1f}' for d in row['round_s'])} | "
              f"{steady(row):.2f} | {steady(row) / steady(first):.2f}x | {row['whole_s']:.0f} | "
              f"{row['driver_peak_mib']:.0f} | "
              f"{row['driver_peak_mib'] / first['driver_peak_mib']:.2f}x | "
              f"{row['child_peak_mib']:.0f} | {row['state_files']} |")
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, {args.rounds} rounds, 10 trained and "
          f"10 evaluated a round; load average (1 min) before / after: {before:.1f} / "
          f"{os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
