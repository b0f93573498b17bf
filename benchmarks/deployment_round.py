"""A deployment round against the same round in simulation.

The same run (the tiny model with DP-SGD on every client, FedBN, 3 clients, a few rounds;
`--secagg` adds secure aggregation) runs

  (a) on a loopback deployment (fedmirasol.testing.loopback: a SuperLink and 3 SuperNodes as
      separate processes, TLS and SuperNode authentication, `flwr run`), with each SuperNode's
      ClientApps either from a warm `fedmirasol clientapp-server` (`--isolation process`) or
      as Flower's default, a new `flwr-clientapp` process per message (`subprocess`);
  (b) in Flower's simulation engine (`simulate`, one virtual client at a time).

Per-round seconds are the server's (metrics.jsonl `duration_s`: sending the round's messages
to aggregating the replies, evaluation included). Prints the mean of rounds 2..N of each
arm, the ratio of each deployment arm to the simulation, and the load average.

    python benchmarks/deployment_round.py [--modes process subprocess] [--rounds 3] [--secagg]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "num-rounds": 3, "model.name": "tiny", "model.num-frames": 8, "data.num-clients": 3,
    "data.clips-per-client": 12, "data.test-clips": 16, "data.val-fraction": 0.25,
    "data.partitioner": "iid", "client.local-epochs": 1, "client.batch-size": 4,
    "client.threads": 1, "strategy.name": "fedbn", "strategy.min-train-nodes": 3,
    "strategy.min-evaluate-nodes": 3, "strategy.min-available-nodes": 3,
    "strategy.round-timeout": 600.0, "privacy.enabled": True, "privacy.noise-multiplier": 1.0,
    "privacy.max-grad-norm": 1.0, "output.plots": False,
}
SECAGG = {"secagg.enabled": True, "secagg.reconstruction-fraction": 0.6,
          "secagg.min-contributors": 2}


def _durations(run_dir: Path) -> list[float]:
    from fedmirasol.runs import run_dir as rundir

    return [float(r["duration_s"]) for r in rundir.read_metrics(run_dir)[1:]]


def _rounds_done(runs: Path) -> int:
    """Rounds (after round 0) in the run's metrics.jsonl so far."""
    from fedmirasol.runs import run_dir as rundir

    found = list(runs.iterdir()) if runs.exists() else []
    return sum(r["round"] >= 1 for r in rundir.read_metrics(found[0])) if found else 0


def deployment_rounds(root: Path, settings: dict, isolation: str, timeout: float) -> list[float]:
    from fedmirasol.testing.loopback import Loopback

    with Loopback(root, nodes=3, isolation=isolation) as link:
        link.start_superlink()
        for i in range(3):
            link.register(i)
            link.start_supernode(i, {"partition-id": i, "num-partitions": 3,
                                     "state-dir": str(root / f"site{i}")})
        config_file = root / "run.toml"  # dotted keys at the top level are TOML tables
        config_file.write_text("".join(f"{key} = {json.dumps(value)}\n"
                                       for key, value in settings.items()))
        run_id = link.run({"config-file": str(config_file),
                           "output.runs-dir": str(root / "runs")})
        # Each `flwr ls` is a CLI process (imports Flower, ~1-2 s of CPU): asked only once
        # the last round is in metrics.jsonl, so that polling does not slow the rounds.
        link.wait_for(lambda: _rounds_done(root / "runs") >= settings["num-rounds"], timeout,
                      f"the {isolation} run's rounds", every=1.0)
        link.wait_for(lambda: link.run_status(run_id).startswith("finished"), 300.0,
                      f"the {isolation} run to finish", every=2.0)
        status = link.run_status(run_id)
        if status != "finished:completed":
            raise RuntimeError(f"{isolation}: {status}\n{link.log('superlink')[-3000:]}")
    (run_dir,) = (root / "runs").iterdir()
    return _durations(run_dir)


def simulation_rounds(root: Path, settings: dict) -> list[float]:
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate

    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    config = load_config(None, overrides + [f"output.runs-dir='{root / 'runs'}'",
                                            "simulation.max-parallel-clients=1"])
    return _durations(simulate(config, progress=None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["process"],
                        choices=["process", "subprocess"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secagg", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = {**SETTINGS, "num-rounds": args.rounds, **(SECAGG if args.secagg else {})}
    before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            started = time.perf_counter()
            rows[f"deployment ({mode})"] = (deployment_rounds(Path(tmp) / mode, settings, mode,
                                                              args.timeout),
                                            time.perf_counter() - started)
        started = time.perf_counter()
        rows["simulation"] = (simulation_rounds(Path(tmp) / "sim", settings),
                              time.perf_counter() - started)
    steady = {name: sum(r[1:]) / len(r[1:]) if len(r) > 1 else r[0]
              for name, (r, _) in rows.items()}
    print("| arm | seconds per round (1..N) | steady round 2..N (s) | vs simulation | whole "
          "(s) |\n| --- | --- | --- | --- | --- |")
    for name, (durations, whole) in rows.items():
        print(f"| {name} | {', '.join(f'{d:.1f}' for d in durations)} | {steady[name]:.2f} | "
              f"{steady[name] / steady['simulation']:.2f}x | {whole:.0f} |")
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, "
          f"{'DP-SGD + SecAgg+' if args.secagg else 'DP-SGD'}, 3 clients, {args.rounds} rounds; "
          f"load average (1 min) before / after: {before:.1f} / {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
