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

`--supernode-idle-sleep flower 0.2` runs each deployment arm twice: with Flower's SuperNode as
it is (`flower`: it sleeps a fixed 3 s whenever it pulls no message) and started through
`benchmarks/supernode_idle_sleep.py`, which sets that one sleep to 0.2 s. That is a diagnosis
of where a deployed round's time goes, not how fedmirasol runs: Flower 1.42 has no setting
for it. `--keep-logs DIR` keeps each arm's process logs (the warm ClientApp servers log when
each task was forked and how long it ran).

    python benchmarks/deployment_round.py [--modes process subprocess] [--rounds 3] [--secagg]
        [--supernode-idle-sleep flower 0.2] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from fedmirasol.testing.loopback import Loopback

LAUNCHER = Path(__file__).resolve().with_name("supernode_idle_sleep.py")

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


def _loopback(root: Path, isolation: str, idle_sleep: float | None) -> "Loopback":
    """The loopback deployment; with `idle_sleep`, its SuperNodes start through LAUNCHER."""
    from fedmirasol.testing.loopback import Loopback

    class IdleSleepLoopback(Loopback):
        def _start(self, name: str, args: list[str]) -> "subprocess.Popen":
            if Path(args[0]).name == "flower-supernode":
                args = [sys.executable, str(LAUNCHER), "--idle-sleep", str(idle_sleep), "--",
                        *args[1:]]
            return super()._start(name, args)

    kind = Loopback if idle_sleep is None else IdleSleepLoopback
    return kind(root, nodes=3, isolation=isolation)


def _cpu_seconds(link: "Loopback") -> dict[str, float]:
    """CPU seconds so far of the SuperNode processes and of the ClientApp tasks that the warm
    ClientApp servers forked and reaped (`--isolation process` only)."""
    import psutil

    cpu = {"SuperNodes": 0.0, "ClientApp tasks": 0.0}
    for name, proc in link.procs.items():
        if name.startswith("node"):
            times = psutil.Process(proc.pid).cpu_times()
            if name.endswith("-clientapps"):
                cpu["ClientApp tasks"] += times.children_user + times.children_system
            else:
                cpu["SuperNodes"] += times.user + times.system
    return cpu


def deployment_rounds(root: Path, settings: dict, isolation: str, timeout: float,
                      idle_sleep: float | None = None) -> tuple[list[float], dict[str, float]]:
    """Per-round seconds of the deployed run, and `_cpu_seconds` at its end."""
    with _loopback(root, isolation, idle_sleep) as link:
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
        cpu = _cpu_seconds(link)
    (run_dir,) = (root / "runs").iterdir()
    return _durations(run_dir), cpu


def simulation_rounds(root: Path, settings: dict) -> list[float]:
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate

    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    config = load_config(None, overrides + [f"output.runs-dir='{root / 'runs'}'",
                                            "simulation.max-parallel-clients=1"])
    return _durations(simulate(config, progress=None))


def _idle_sleep(value: str) -> float | None:
    """`flower` (Flower's own 3 s) -> None; else seconds >= 0."""
    if value == "flower":
        return None
    seconds = float(value)
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"not flower or seconds >= 0: {value}")
    return seconds


def _keep_logs(root: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        shutil.copy2(log, to / log.name)
    for metrics in (root / "runs").glob("*/metrics.jsonl"):
        shutil.copy2(metrics, to / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["process"],
                        choices=["process", "subprocess"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secagg", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--supernode-idle-sleep", nargs="+", default=["flower"],
                        type=_idle_sleep, metavar="flower|SECONDS",
                        help="one deployment arm per value: Flower's SuperNode as it is "
                             "(flower, the default) or with its 3 s idle sleep set to SECONDS "
                             "(a diagnosis, not how fedmirasol runs)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy each arm's process logs to DIR/<arm>/")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = {**SETTINGS, "num-rounds": args.rounds, **(SECAGG if args.secagg else {})}
    before = os.getloadavg()[0]
    rows = {}
    cpu: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for idle_sleep in args.supernode_idle_sleep:
                arm = mode if idle_sleep is None else f"{mode}-idle{idle_sleep:g}"
                name = (f"deployment ({mode})" if idle_sleep is None else
                        f"deployment ({mode}), SuperNode idle sleep {idle_sleep:g} s "
                        "instead of 3 s (diagnosis)")
                started = time.perf_counter()
                try:
                    durations, cpu[name] = deployment_rounds(Path(tmp) / arm, settings, mode,
                                                             args.timeout, idle_sleep)
                    rows[name] = (durations, time.perf_counter() - started)
                finally:
                    if args.keep_logs is not None:
                        _keep_logs(Path(tmp) / arm, args.keep_logs / arm)
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
    print("\n| deployment arm | CPU s of the ClientApp tasks (3 nodes, whole run) | CPU s of "
          "the 3 SuperNode processes |\n| --- | --- | --- |")
    for name, seconds in cpu.items():
        tasks = f"{seconds['ClientApp tasks']:.1f}" if seconds["ClientApp tasks"] else "-"
        print(f"| {name} | {tasks} | {seconds['SuperNodes']:.1f} |")
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, "
          f"{'DP-SGD + SecAgg+' if args.secagg else 'DP-SGD'}, 3 clients, {args.rounds} rounds; "
          f"load average (1 min) before / after: {before:.1f} / {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
