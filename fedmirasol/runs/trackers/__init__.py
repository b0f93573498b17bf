"""Experiment trackers (`output.trackers`): every round's figures also go to TensorBoard and/or
MLflow, live while the run goes on; a resumed run continues the same tracker runs.

The server loop opens them around a run (`open_trackers`) and feeds the `RunTrackers` its round
events: each round's record once it is in metrics.jsonl (round 0: the initial model), and the
end of the run once the final model and report.json are written. What a tracker gets of a round
is `scalars.record_scalars` of that record (never a figure the record does not hold) and the
privacy ledger's epsilon so far. A tracker that fails during the run is logged and switched off;
the run and metrics.jsonl go on.

To add a tracker: a class with the `base.Tracker` interface and a classmethod `open`, one line in
`TRACKERS`, its name in `fedmirasol.config.sections.TRACKERS`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from fedmirasol.config import RunConfig
from fedmirasol.privacy import ledger
from fedmirasol.runs.trackers.base import Tracker, TrackerFactory, require
from fedmirasol.runs.trackers.mlflow_tracker import MlflowTracker
from fedmirasol.runs.trackers.scalars import privacy_scalars, record_scalars
from fedmirasol.runs.trackers.tensorboard_tracker import TensorBoardTracker

log = logging.getLogger("fedmirasol.runs")

TRACKERS: dict[str, TrackerFactory] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
}


def require_packages(config: RunConfig) -> None:
    """A ConfigError naming the extra if a tracker of the config lacks its package (callers
    check before starting anything expensive)."""
    for name in config.output.trackers:
        require(TRACKERS[name].package, name)


class RunTrackers:
    """The run's open trackers, fed by the server loop (none: every call does nothing)."""

    def __init__(self, run_dir: Path, trackers: Mapping[str, Tracker] | None = None) -> None:
        self.run_dir = run_dir
        self.trackers = dict(trackers or {})

    def log_round(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record (step = its round)."""
        if not self.trackers:
            return
        records = ledger.read(self.run_dir) if ledger.ledger_path(self.run_dir).is_file() else []
        scalars = record_scalars(record) | privacy_scalars(records, record["round"])
        self._each(f"round {record['round']}", lambda t: t.log_round(record["round"], scalars))

    def log_finished(self) -> None:
        """The final model and report.json are written."""
        self._each("the end of the run", lambda t: t.log_finished(self.run_dir))

    def _each(self, what: str, call: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as error:  # noqa: BLE001 - a tracker never stops the run
                log.warning("fedmirasol: tracker %s failed at %s (%s: %s); it is switched off "
                            "for the rest of the run (metrics.jsonl has every round)", name,
                            what, type(error).__name__, error)
                self.trackers.pop(name)
                _close(name, tracker, "FAILED")

    def close(self, status: str) -> None:
        for name, tracker in self.trackers.items():
            _close(name, tracker, status)
        self.trackers.clear()


def _close(name: str, tracker: Tracker, status: str) -> None:
    try:
        tracker.close(status)
    except Exception as error:  # noqa: BLE001 - closing one never keeps the others open
        log.warning("fedmirasol: tracker %s did not close (%s: %s)", name,
                    type(error).__name__, error)


@contextmanager
def open_trackers(config: RunConfig, run_dir: Path, start_round: int) -> Iterator[RunTrackers]:
    """The config's trackers, open for a run that starts (or resumes) at `start_round`; closed
    as FINISHED when the block ends, FAILED on an error, KILLED on an interrupt."""
    first_step = start_round if start_round > 1 else 0  # a fresh run logs round 0 too
    trackers = RunTrackers(run_dir)
    try:
        for name in config.output.trackers:
            trackers.trackers[name] = TRACKERS[name].open(config, run_dir, first_step)
        yield trackers
    except BaseException as error:
        trackers.close("FAILED" if isinstance(error, Exception) else "KILLED")
        raise
    trackers.close("FINISHED")
