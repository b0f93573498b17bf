"""The interface of an experiment tracker, and the check for its optional package."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Mapping, Protocol

from fedmirasol.config import RunConfig
from fedmirasol.errors import ConfigError

EXTRA = "tracking"


class Tracker(Protocol):
    """Where a run's figures go besides metrics.jsonl. `open` starts (or, for a resumed run
    directory, continues) the tracker's run; the server loop then calls `log_round` once per
    round record, `log_finished` when the final model and report.json are written, and `close`
    at the end ("FINISHED", "FAILED" or "KILLED")."""

    name: str

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_finished(self, run_dir: Path) -> None: ...

    def close(self, status: str) -> None: ...


class TrackerFactory(Protocol):
    package: str  # the module the tracker needs, from the `tracking` extra

    def open(self, config: RunConfig, run_dir: Path, first_step: int) -> Tracker: ...


def require(module: str, tracker: str) -> ModuleType:
    """Import `module`, or a ConfigError naming the tracker and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"config key 'output.trackers' names {tracker!r}, which needs the {module!r} "
            f"package ({error}); install fedmirasol's {EXTRA!r} extra: "
            f"pip install -e '.[{EXTRA}]' -c requirements.lock") from None
