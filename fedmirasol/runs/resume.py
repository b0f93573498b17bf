"""Reopen a run directory to continue it after its last checkpoint.

`open_run` decides fresh or resumed for every engine. Resuming is used by
`fedmirasol simulate --resume DIR` and by a deployed ServerApp started with
``output.resume-from = "DIR"`` after the previous ServerApp or SuperLink died. The run keeps
its original config (the one in DIR); rounds after the checkpoint are run again, and their
metric lines are dropped first, so every round appears once. Clients restore their own state
(local layers, DP accountant) from their state directories, and the privacy ledger's readers
keep the last record of each (client, round), so a repeated round is never counted twice.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, NamedTuple

from fedmirasol.runs import run_dir as rundir
from fedmirasol.config import RunConfig

log = logging.getLogger("fedmirasol.runs")


def open_for_resume(run_dir: str | Path) -> tuple[RunConfig, rundir.Checkpoint | None]:
    """(the run's config, its latest checkpoint or None); without a checkpoint the run's
    metrics are cleared so it starts over in the same directory."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    checkpoint = rundir.latest_checkpoint(run_dir)
    done = checkpoint.server_round if checkpoint else 0
    log.info("fedmirasol: resuming %s after round %s", run_dir, done)
    if checkpoint is None:
        rundir.truncate_metrics(run_dir, -1)
    return config, checkpoint


class OpenedRun(NamedTuple):
    """Where a run goes: its directory, config and the checkpoint it continues after."""

    run_dir: Path
    config: RunConfig
    checkpoint: rundir.Checkpoint | None
    created: bool  # a new directory: removed again if the run fails before its first round

    def guard(self) -> ContextManager[Any]:
        """Remove a directory made for this run if the run fails before its first round (it
        would hold nothing to report or resume); a resumed directory is kept."""
        return rundir.removed_if_failed_early(self.run_dir) if self.created else nullcontext()


def open_run(config: RunConfig | None = None, resume: str | Path | None = None) -> OpenedRun:
    """Fresh or resumed, decided here for every engine: continue the run directory `resume`
    with its own config, or create a new one under `config.output.runs-dir` and write
    `config` to it."""
    if resume is not None:
        run_dir = Path(resume)
        config, checkpoint = open_for_resume(run_dir)
        opened = OpenedRun(run_dir, config, checkpoint, created=False)
    elif config is None:
        raise ValueError("a run needs a config or a run directory to resume")
    else:
        run_dir = rundir.create(config.output.runs_dir, config.name)
        rundir.write_config(run_dir, config)
        opened = OpenedRun(run_dir, config, None, created=True)
    log.info("fedmirasol: run directory %s", opened.run_dir.resolve())
    return opened
