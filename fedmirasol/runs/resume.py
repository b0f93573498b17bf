"""Reopen a run directory to continue it after its last checkpoint.

Used by `fedmirasol simulate --resume DIR` and by a deployed ServerApp started with
``output.resume-from = "DIR"`` after the previous ServerApp or SuperLink died. The run keeps
its original config (the one in DIR); rounds after the checkpoint are run again, and their
metric lines are dropped first, so every round appears once. Clients restore their own state
(local layers, DP accountant) from their state directories, and the privacy ledger's readers
keep the last record of each (client, round), so a repeated round is never counted twice.
"""

from __future__ import annotations

from pathlib import Path

from fedmirasol.runs import run_dir as rundir
from fedmirasol.config.legacy import Config


def open_for_resume(run_dir: str | Path) -> tuple[Config, rundir.Checkpoint | None]:
    """(the run's config, its latest checkpoint or None); without a checkpoint the run's
    metrics are cleared so it starts over in the same directory."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    checkpoint = rundir.latest_checkpoint(run_dir)
    done = checkpoint.server_round if checkpoint else 0
    print(f"fedmirasol: resuming {run_dir} after round {done}", flush=True)
    if checkpoint is None:
        rundir.truncate_metrics(run_dir, -1)
    return config, checkpoint
