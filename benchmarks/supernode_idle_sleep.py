"""Flower's SuperNode with its idle sleep set to S seconds: a diagnosis, not how fedmirasol runs.

A Flower 1.42 SuperNode that pulls no message sleeps a fixed 3 s before it asks again
(`flwr/supernode/start_client_internal.py`, `time.sleep(3)` in `start_client_internal`'s
loop; no flag or setting changes it). `benchmarks/deployment_round.py --supernode-idle-sleep S`
starts its SuperNodes through this launcher to measure a round without that wait. Only that
sleep changes: the `time` name of Flower's module becomes an object whose `sleep(3)` sleeps S
seconds and which passes everything else (`sleep(0.5)` while a reply is awaited included) to
`time`. Then Flower's own entry point (`flower-supernode`) runs with the remaining arguments.

    python benchmarks/supernode_idle_sleep.py --idle-sleep 0.2 -- [flower-supernode args]
"""

from __future__ import annotations

import inspect
import sys
import time
from types import ModuleType
from typing import Any

FLOWER_IDLE_SLEEP = 3  # seconds, start_client_internal's `time.sleep(3)`


class IdleSleepTime:
    """`time`, except that sleep(FLOWER_IDLE_SLEEP) sleeps `idle_sleep` seconds."""

    def __init__(self, idle_sleep: float) -> None:
        self.idle_sleep = idle_sleep

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_sleep if seconds == FLOWER_IDLE_SLEEP else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def patch(idle_sleep: float) -> ModuleType:
    """Set the idle sleep of Flower's SuperNode loop to `idle_sleep` s; the patched module.
    Refuses (RuntimeError) if Flower's loop no longer has that sleep where it was."""
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop.start_client_internal)
    if loop.time is not time or source.count(f"time.sleep({FLOWER_IDLE_SLEEP})") != 1:
        raise RuntimeError("flwr.supernode.start_client_internal no longer sleeps "
                           f"time.sleep({FLOWER_IDLE_SLEEP}) once when idle: the patch "
                           "does not apply to this Flower version")
    loop.time = IdleSleepTime(idle_sleep)  # type: ignore[assignment]
    return loop


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--idle-sleep":
        raise SystemExit(__doc__.strip().splitlines()[-1].strip())
    idle_sleep = float(argv[1])
    rest = argv[2:]
    patch(idle_sleep)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *(rest[1:] if rest[:1] == ["--"] else rest)]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
