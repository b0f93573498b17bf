"""TensorBoard: event files in `<run dir>/tensorboard/`, one scalar per figure and round, and
the resolved config as text (`tensorboard --logdir runs/` shows every run side by side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedmirasol.config import RunConfig, to_table
from fedmirasol.runs.trackers.base import require
from fedmirasol.runs.trackers.scalars import EPSILON_TAGS

LOG_DIR = "tensorboard"


def float32_not_below(value: float) -> float:
    """`value` as the float32 TensorBoard stores, rounded up where float32 would round it
    down: an epsilon is never shown smaller than it is."""
    stored = np.float32(value)
    if float(stored) < value:
        stored = np.nextafter(stored, np.float32(np.inf))
    return float(stored)


class TensorBoardTracker:
    name = "tensorboard"
    package = "tensorboard"

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, config: RunConfig, run_dir: Path, first_step: int) -> "TensorBoardTracker":
        """A writer on `run_dir/tensorboard`. A resumed run appends there; the events from
        `first_step` (the first round it logs) on that the interrupted run had logged are purged
        (TensorBoard hides them), as metrics.jsonl drops those rounds."""
        require(cls.package, cls.name)
        from torch.utils.tensorboard import SummaryWriter

        log_dir = run_dir / LOG_DIR
        resumed = log_dir.is_dir() and any(log_dir.iterdir())
        writer = SummaryWriter(str(log_dir), purge_step=first_step if resumed else None)
        if not resumed:
            text = json.dumps(to_table(config), indent=2, sort_keys=True)
            # Markdown: a 4-space indent keeps it a verbatim block.
            writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)
            writer.flush()
        return cls(writer)

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            if tag in EPSILON_TAGS:
                value = float32_not_below(value)
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # visible in a running TensorBoard at once

    def log_finished(self, run_dir: Path) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()
