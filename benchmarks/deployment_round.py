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

`--supernode-idle-sleep flower 0.2` runs two deployment arms per mode: with Flower's SuperNode
as it is (`flower`: it sleeps a fixed 3 s whenever it pulls no message) and started through
`benchmarks/supernode_idle_sleep.py`, which sets that one sleep to 0.2 s. `--clientapp-phases`
starts the warm ClientApp servers through `benchmarks/clientapp_phases.py` and prints the wall
and CPU seconds of each phase of their train and evaluate tasks. Both are a diagnosis of where
a deployed round's time goes, not how fedmirasol runs (Flower 1.42 has no setting for that
sleep). Each deployment arm also prints the CPU seconds of its ClientApp tasks and SuperNodes.
`--keep-logs DIR` keeps each arm's process logs.

    python benchmarks/deployment_round.py [--modes process subprocess] [--rounds 3] [--secagg]
        [--supernode-idle-sleep flower 0.2] [--clientapp-phases] [--keep-logs DIR]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from fedmirasol.testing.loopback import Loopback

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "supernode_idle_sleep.py"
PHASES_LAUNCHER = HERE / "clientapp_phases.py"
PHASES = ("message", "fab", "clientapp", "reply")  # clientapp_phases.py's, in task order


@dataclass
class Deployed:
    """A deployment arm: per-round seconds, CPU seconds (`_cpu_seconds`) and, with
    `--clientapp-phases`, one record per ClientApp task (clientapp_phases.py's lines)."""

    durations: list[float]
    cpu: dict[str, float]
    tasks: list[dict] = field(default_factory=list)


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


def _loopback(root: Path, isolation: str, idle_sleep: float | None = None,
              phases: bool = False) -> "Loopback":
    """The loopback deployment; with `idle_sleep` its SuperNodes start through LAUNCHER, with
    `phases` its warm ClientApp servers through PHASES_LAUNCHER."""
    from fedmirasol.testing.loopback import Loopback

    launchers = {}
    if idle_sleep is not None:
        launchers["flower-supernode"] = [sys.executable, str(LAUNCHER), "--idle-sleep",
                                         str(idle_sleep), "--"]
    if phases:
        launchers["fedmirasol"] = [sys.executable, str(PHASES_LAUNCHER)]

    class LaunchedLoopback(Loopback):
        def _start(self, name: str, args: list[str]) -> "subprocess.Popen":
            prefix = launchers.get(Path(args[0]).name)
            return super()._start(name, args if prefix is None else [*prefix, *args[1:]])

    return (LaunchedLoopback if launchers else Loopback)(root, nodes=3, isolation=isolation)


def _task_records(root: Path) -> list[dict]:
    """clientapp_phases.py's lines in the warm ClientApp servers' logs."""
    from clientapp_phases import PREFIX

    return [json.loads(line[len(PREFIX):]) for log in sorted(root.glob("node*-clientapps.log"))
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith(PREFIX)]


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
                      idle_sleep: float | None = None, phases: bool = False) -> Deployed:
    with _loopback(root, isolation, idle_sleep, phases) as link:
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
    return Deployed(_durations(run_dir), cpu, _task_records(root) if phases else [])


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


def _mean_pair(values: list[list[float]]) -> str:
    """[[wall, cpu], ...] -> 'mean wall / mean cpu'."""
    return (f"{sum(v[0] for v in values) / len(values):.2f} / "
            f"{sum(v[1] for v in values) / len(values):.2f}")


def _print_phases(deployed: dict[str, Deployed]) -> None:
    """Mean wall / CPU seconds of each phase of the train and evaluate tasks, per arm."""
    print("\n| deployment arm | task | n | " + " | ".join(PHASES) + " | whole task |\n|"
          + " --- |" * (len(PHASES) + 4))
    for name, arm in deployed.items():
        for kind in ("train", "evaluate"):
            found = [t for t in arm.tasks if t["type"] == kind]
            if found:
                cells = [_mean_pair([t["phases"].get(p, [0.0, 0.0]) for t in found])
                         for p in PHASES]
                print(f"| {name} | {kind} | {len(found)} | {' | '.join(cells)} | "
                      f"{_mean_pair([t['task'] for t in found])} |")
    print("(seconds, wall / CPU of the task process, mean over the run's tasks of that kind)")


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
    parser.add_argument("--clientapp-phases", action="store_true",
                        help="time the phases of each ClientApp task (process mode; a "
                             "diagnosis, not how fedmirasol runs)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy each arm's process logs to DIR/<arm>/")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = {**SETTINGS, "num-rounds": args.rounds, **(SECAGG if args.secagg else {})}
    before = os.getloadavg()[0]
    rows = {}
    deployed: dict[str, Deployed] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for idle_sleep in args.supernode_idle_sleep:
                arm = mode if idle_sleep is None else f"{mode}-idle{idle_sleep:g}"
                name = (f"deployment ({mode})" if idle_sleep is None else
                        f"deployment ({mode}), SuperNode idle sleep {idle_sleep:g} s "
                        "instead of 3 s (diagnosis)")
                started = time.perf_counter()
                try:
                    deployed[name] = deployment_rounds(
                        Path(tmp) / arm, settings, mode, args.timeout, idle_sleep,
                        args.clientapp_phases and mode == "process")
                    rows[name] = (deployed[name].durations, time.perf_counter() - started)
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
    for name, arm in deployed.items():
        tasks = f"{arm.cpu['ClientApp tasks']:.1f}" if arm.cpu["ClientApp tasks"] else "-"
        print(f"| {name} | {tasks} | {arm.cpu['SuperNodes']:.1f} |")
    if args.clientapp_phases:
        _print_phases(deployed)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, "
          f"{'DP-SGD + SecAgg+' if args.secagg else 'DP-SGD'}, 3 clients, {args.rounds} rounds; "
          f"load average (1 min) before / after: {before:.1f} / {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
