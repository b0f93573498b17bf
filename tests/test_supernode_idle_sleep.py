"""benchmarks/supernode_idle_sleep.py (a diagnosis for deployment_round.py): only Flower's
SuperNode idle sleep changes, and deployment_round.py starts its SuperNodes through it."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """benchmarks/<name>.py as module <name> (as when the benchmark runs as a script)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def test_only_flowers_idle_sleep_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = _load("supernode_idle_sleep")
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    patched = launcher.patch(0.2)
    assert patched is loop and isinstance(loop.time, launcher.IdleSleepTime)
    loop.time.sleep(3)
    loop.time.sleep(0.5)  # while a reply is awaited: Flower's own
    assert slept == [0.2, 0.5]
    assert loop.time.monotonic is time.monotonic  # everything else passes through
    with pytest.raises(RuntimeError, match="does not apply"):
        launcher.patch(0.2)  # refuses a module it no longer recognises


def test_deployment_round_starts_supernodes_through_the_launcher(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load("deployment_round")
    assert bench._idle_sleep("flower") is None and bench._idle_sleep("0.2") == 0.2
    with pytest.raises(argparse.ArgumentTypeError):
        bench._idle_sleep("-1")
    from fedmirasol.testing.loopback import Loopback

    started: list[list[str]] = []
    monkeypatch.setattr(Loopback, "_start", lambda self, name, args: started.append(args))
    link = bench._loopback(tmp_path, "process", 0.2)
    link._start("node0", ["/venv/bin/flower-supernode", "--port", "1"])
    link._start("node0-clientapps", ["/venv/bin/fedmirasol", "clientapp-server"])
    assert started == [
        [sys.executable, str(BENCHMARKS / "supernode_idle_sleep.py"), "--idle-sleep", "0.2",
         "--", "--port", "1"],
        ["/venv/bin/fedmirasol", "clientapp-server"]]
    started.clear()
    link = bench._loopback(tmp_path / "phases", "process", None, phases=True)
    link._start("node0", ["/venv/bin/flower-supernode", "--port", "1"])
    link._start("node0-clientapps", ["/venv/bin/fedmirasol", "clientapp-server"])
    assert started == [["/venv/bin/flower-supernode", "--port", "1"],
                       [sys.executable, str(BENCHMARKS / "clientapp_phases.py"),
                        "clientapp-server"]]
    assert type(bench._loopback(tmp_path / "flower", "process", None)) is Loopback


def test_deployment_round_reads_and_prints_the_task_phases(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("deployment_round")
    prefix = _load("clientapp_phases").PREFIX
    record = {"type": "train", "pid": 7, "task": [4.0, 1.5],
              "phases": {"message": [1.0, 0.1], "fab": [0.5, 0.2], "clientapp": [2.0, 1.0],
                         "reply": [0.1, 0.05]}}
    (tmp_path / "node0-clientapps.log").write_text(
        "ClientApp task 1 in process 7\n" + prefix + json.dumps(record) + "\n")
    tasks = bench._task_records(tmp_path)
    assert tasks == [record]
    bench._print_phases({"arm": bench.Deployed([1.0], {}, tasks)})
    out = capsys.readouterr().out
    assert "| arm | train | 1 | 1.00 / 0.10 | 0.50 / 0.20 | 2.00 / 1.00 | 0.10 / 0.05 | " \
           "4.00 / 1.50 |" in out
