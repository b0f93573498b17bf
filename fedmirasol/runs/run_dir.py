"""The run directory: resolved config, per-round metrics, checkpoints, final model, report.

Layout::

    runs/<name>-<time>/
        config.json          the resolved run config
        partitions.json      per client: data sizes, label histogram, domain, modalities
        metrics.jsonl        one JSON object per completed round
        checkpoints/round-NNNN.{safetensors,json}  global shared arrays + strategy state after round N
        client-state/        client state mirrors (simulation only; for resuming)
        final_model.pt       the final global model's state_dict
        report.json          summary of the run
        plots/*.png
        tensorboard/         TensorBoard event files (output.trackers = ["tensorboard"])
        mlflow.json          the MLflow store and run it continues (output.trackers = ["mlflow"])
"""

from __future__ import annotations

import logging
import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fedmirasol.config import RunConfig, from_table, to_table
from fedmirasol.errors import ConfigError

log = logging.getLogger("fedmirasol.runs")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"
FINAL_MODEL_FILE = "final_model.pt"
CHECKPOINT_DIR = "checkpoints"
PARTITIONS_FILE = "partitions.json"


def create(runs_dir: str | Path, name: str) -> Path:
    """A new, empty `runs_dir/<name>-<time>` directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def completed_a_round(run_dir: str | Path) -> bool:
    """Whether `run_dir`'s metrics hold a completed round (round 1 or later)."""
    try:
        return any(record["round"] >= 1 for record in read_metrics(run_dir))
    except (OSError, ValueError, KeyError):  # a line cut short: something was written
        return True


@contextmanager
def removed_if_failed_early(run_dir: Path) -> Iterator[Path]:
    """Remove the new run directory `run_dir` when the block fails (or is interrupted) before
    the run completes its first round: nothing in it could be reported or resumed. A run that
    got further keeps its directory (`fedmirasol simulate --resume` continues it)."""
    try:
        yield run_dir
    except BaseException:
        if run_dir.is_dir() and not completed_a_round(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            log.info("fedmirasol: removed %s: the run failed before its first round", run_dir)
        raise


def write_config(run_dir: Path, config: RunConfig) -> None:
    (run_dir / CONFIG_FILE).write_text(json.dumps(to_table(config), indent=2, sort_keys=True)
                                       + "\n")


def write_partitions(run_dir: Path, partitions: list[dict[str, Any]]) -> None:
    (run_dir / PARTITIONS_FILE).write_text(json.dumps(partitions, indent=1) + "\n")


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return from_table(json.loads(path.read_text()))


def finite_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with every NaN or infinite number (a diverged model's loss, a client's NaN
    train loss) replaced by None, so the round is still recorded in strict JSON; the keys
    replaced are logged."""
    replaced: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(path)
            return None
        if isinstance(value, Mapping):
            return {key: clean(item, f"{path}.{key}" if path else str(key))
                    for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return value

    cleaned = clean(record, "")
    if replaced:
        log.warning("round %s: non-finite values recorded as null: %s", record.get("round"),
                    ", ".join(replaced))
    return cleaned


def append_metrics(run_dir: Path, record: Mapping[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_round: int) -> None:
    """Drop metric lines of rounds after `last_round` (a resumed run redoes them)."""
    kept = [r for r in read_metrics(run_dir) if r["round"] <= last_round]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    (run_dir / METRICS_FILE).write_text(text)


# A strategy's round-to-round state: attribute -> (kind, array names, arrays), kind one of
# "dict" (name -> array), "record" (an ArrayRecord), "list" (arrays in order).
StrategyState = dict[str, tuple[str, list[str], list[np.ndarray]]]


@dataclass
class Checkpoint:
    server_round: int
    global_shared: dict[str, np.ndarray]
    strategy_state: StrategyState
    partitions: dict[int, int]  # node id -> partition id at the time (informational)


CHECKPOINT_FORMAT = "fedmirasol-checkpoint-1"


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """round-NNNN.safetensors (the global shared parameters and the strategy's arrays) and
    round-NNNN.json (the round, the strategy state's layout, the partitions): no pickle."""
    directory = run_dir / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    stem = directory / f"round-{checkpoint.server_round:04d}"
    tensors = {f"global/{name}": np.ascontiguousarray(value)
               for name, value in checkpoint.global_shared.items()}
    layout = {}
    for attr, (kind, names, arrays) in checkpoint.strategy_state.items():
        layout[attr] = {"kind": kind, "names": names}
        tensors.update({f"strategy/{attr}/{i}": np.ascontiguousarray(a)
                        for i, a in enumerate(arrays)})
    meta = {"format": CHECKPOINT_FORMAT, "server_round": checkpoint.server_round,
            "global": list(checkpoint.global_shared), "strategy": layout,
            "partitions": {str(node): pid for node, pid in checkpoint.partitions.items()}}
    arrays_tmp, meta_tmp = stem.with_suffix(".safetensors.tmp"), stem.with_suffix(".json.tmp")
    save_file(tensors, str(arrays_tmp))
    meta_tmp.write_text(json.dumps(meta, indent=1) + "\n")
    arrays_tmp.replace(stem.with_suffix(".safetensors"))
    meta_tmp.replace(stem.with_suffix(".json"))  # written last: marks the checkpoint complete
    return stem.with_suffix(".json")


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    metas = sorted(directory.glob("round-*.json"))
    if not metas:
        old = sorted(directory.glob("round-*.pkl"))
        if old:
            raise ConfigError(f"{old[-1]} is a checkpoint of an older fedmirasol (a pickle); "
                              "this version reads safetensors + JSON checkpoints only and does "
                              "not unpickle files: start a new run")
        return None
    return read_checkpoint(metas[-1])


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint whose round-NNNN.json is `path`."""
    meta = json.loads(path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    tensors = load_file(str(path.with_suffix(".safetensors")))
    state = {attr: (entry["kind"], entry["names"],
                    [tensors[f"strategy/{attr}/{i}"] for i in range(len(entry["names"]))])
             for attr, entry in meta["strategy"].items()}
    return Checkpoint(server_round=int(meta["server_round"]),
                      global_shared={name: tensors[f"global/{name}"] for name in meta["global"]},
                      strategy_state=state,
                      partitions={int(node): int(pid) for node, pid in meta["partitions"].items()})


def save_final_model(run_dir: Path, state_dict: Mapping[str, torch.Tensor],
                     model_config: Mapping[str, Any]) -> Path:
    path = run_dir / FINAL_MODEL_FILE
    torch.save({"model_config": dict(model_config), "state_dict": dict(state_dict)}, path)
    return path


def write_report(run_dir: Path, report: Mapping[str, Any]) -> None:
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def read_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
