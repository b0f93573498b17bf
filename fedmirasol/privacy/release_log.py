"""A site's privacy spend on one dataset: an append-only log of every charge, ever.

One JSON object a line: ``{"run", "round", "phase", "noise-multiplier", "sample-rate",
"steps", "unit"}`` for each batch of releases (a round's DP-SGD steps and its DP loss figures,
a DP evaluation, local adaptation), and ``{"run", "calibrated-noise-multiplier"}`` once per run
in target mode. A charge is written (and flushed to disk) *before* the releases it covers are
computed, so a process killed at any point has accounted at least what it released; a round
repeated after a crash is charged again (never in the site's favour). Nothing is ever removed
or rewritten, so the accountant rebuilt from the log only grows, across rounds, restarts and
runs: the per-run epsilon composes the lines of one run, the lifetime epsilon all of them.

A site with a state directory keeps the log at ``<state-dir>/privacy/<dataset-id>.jsonl`` (a
simulated client: in the run's client-state folder); a client without one keeps it in its
Flower ``context.state`` (it lasts as long as the process).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from flwr.app import ConfigRecord, RecordDict

from fedmirasol.errors import ConfigError
from fedmirasol.privacy.accountant_state import new_accountant

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

STATE_KEY = "privacy-log"  # ConfigRecord in context.state (clients without a state folder)

History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps)


@dataclass(frozen=True)
class Charge:
    """Releases of one subsampled Gaussian mechanism: `steps` draws at `sample_rate`, each
    with noise `noise_multiplier` times its sensitivity."""

    phase: str  # train | evaluate | adapt
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if self.steps < 0 or not 0 < self.sample_rate <= 1 or self.noise_multiplier < 0:
            raise ValueError(f"invalid privacy charge {self}")


class ReleaseLog:
    """The lines of one dataset's log, and where new lines go (a file or ``context.state``)."""

    def __init__(self, lines: list[dict[str, Any]], path: Path | None = None,
                 state: RecordDict | None = None) -> None:
        self.lines = lines
        self.path = path
        self.state = state

    @classmethod
    def on_disk(cls, path: str | Path) -> "ReleaseLog":
        path = Path(path)
        lines = []
        if path.is_file():
            for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if text.strip():
                    try:
                        lines.append(json.loads(text))
                    except json.JSONDecodeError as error:
                        raise ConfigError(f"{path}:{number}: not a JSON record ({error}); the "
                                          "site's privacy log is damaged") from error
        return cls(lines, path=path)

    @classmethod
    def in_state(cls, state: RecordDict) -> "ReleaseLog":
        record = state.config_records.get(STATE_KEY)
        lines = [json.loads(text) for text in record["lines"]] if record else []
        return cls(lines, state=state)

    def _append(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, allow_nan=False, sort_keys=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        else:
            assert self.state is not None
            kept = [json.dumps(old, sort_keys=True) for old in self.lines]
            self.state[STATE_KEY] = ConfigRecord({"lines": kept + [text]})
        self.lines.append(line)

    def charge(self, run: str, server_round: int, unit: str, charges: Iterable[Charge]) -> None:
        """Write the charges down before the releases they cover are made."""
        for item in charges:
            if item.steps:
                self._append({"run": run, "round": int(server_round), "phase": item.phase,
                              "noise-multiplier": float(item.noise_multiplier),
                              "sample-rate": float(item.sample_rate), "steps": int(item.steps),
                              "unit": unit})

    def calibrated(self, run: str) -> float | None:
        """The noise multiplier calibrated for `run` (target mode), if any."""
        values = [line["calibrated-noise-multiplier"] for line in self.lines
                  if line.get("run") == run and "calibrated-noise-multiplier" in line]
        return float(values[0]) if values else None

    def record_calibration(self, run: str, noise_multiplier: float) -> None:
        self._append({"run": run, "calibrated-noise-multiplier": float(noise_multiplier)})

    def units(self) -> set[str]:
        return {line["unit"] for line in self.lines if "steps" in line}

    def history(self, run: str | None = None) -> History:
        """The charges of `run` (None: of every run), merged per (sigma, rate) in order of
        first use: composition does not depend on the order."""
        merged: dict[tuple[float, float], int] = {}
        for line in self.lines:
            if "steps" in line and (run is None or line["run"] == run):
                key = (float(line["noise-multiplier"]), float(line["sample-rate"]))
                merged[key] = merged.get(key, 0) + int(line["steps"])
        return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def accountant_of(history: History, mechanism: str) -> IAccountant:
    """An Opacus accountant holding `history` (its `load_state_dict` format)."""
    accountant = new_accountant(mechanism)
    accountant.load_state_dict({"mechanism": mechanism,
                                "history": [(s, q, n) for s, q, n in history if n > 0]})
    return accountant


def history_steps(history: History) -> int:
    return int(sum(steps for _, _, steps in history))


def flatten(history: History) -> list[float]:
    """The history as one list (sigma, q, steps, sigma, q, steps, ...) for a MetricRecord."""
    return [float(value) for entry in history for value in entry]


def unflatten(values: Iterable[float]) -> History:
    values = list(values)
    if len(values) % 3:
        raise ValueError(f"a DP history has 3 numbers per entry, got {len(values)}")
    return [(float(values[i]), float(values[i + 1]), int(values[i + 2]))
            for i in range(0, len(values), 3)]
