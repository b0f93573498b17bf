"""`fedmirasol clientapp-server` whose ClientApp tasks time their phases: a diagnosis for
`benchmarks/deployment_round.py --clientapp-phases`, not how fedmirasol runs.

Each forked task prints one line, PREFIX + JSON: its message type, and the wall and CPU seconds
of the whole task and of the phases of Flower's `run_clientapp`: `message` (pull_task_input:
waiting for and pulling the message from the SuperNode), `fab` (install_from_fab: unpacking
the run's FAB, every task), `clientapp` (the ClientApp itself), `reply` (push_message). CPU
seconds are the task process's own (a forked child's counters start at zero).

    python benchmarks/clientapp_phases.py [fedmirasol clientapp-server args]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Callable

PREFIX = "clientapp-phases "


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(phases: dict[str, list[float]], name: str, fn: Callable[..., Any]
           ) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), _cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] = [time.perf_counter() - wall, _cpu() - cpu]
    return timed


def instrument() -> dict[str, Any]:
    """Time the phases of every task forked from now on; the record a task fills in."""
    from flwr.clientapp.client_app import ClientApp
    from flwr.supernode.runtime import run_clientapp as flower

    from fedmirasol.engines import warm_clientapp

    record: dict[str, Any] = {"type": "", "phases": {}}
    phases = record["phases"]
    for name, owner, attr in (("message", flower, "pull_task_input"),
                              ("fab", flower, "install_from_fab"),
                              ("reply", flower, "push_message"),
                              ("clientapp", ClientApp, "__call__")):
        setattr(owner, attr, _timed(phases, name, getattr(owner, attr)))
    call = ClientApp.__call__

    def typed_call(self: Any, message: Any, context: Any) -> Any:
        record["type"] = message.metadata.message_type
        return call(self, message=message, context=context)

    ClientApp.__call__ = typed_call  # type: ignore[method-assign]
    run_task = warm_clientapp._run_task

    def run_timed(spec: Any) -> int:
        wall = time.perf_counter()
        try:
            return run_task(spec)
        finally:
            print(PREFIX + json.dumps({**record, "pid": os.getpid(), "task": [
                time.perf_counter() - wall, _cpu()]}), flush=True)

    warm_clientapp._run_task = run_timed
    return record


def main(argv: list[str]) -> int:
    instrument()
    from fedmirasol.cli import main as fedmirasol

    sys.argv = ["fedmirasol", *argv]
    return int(fedmirasol() or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
