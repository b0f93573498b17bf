"""The run's privacy ledger: append-only JSON lines in the run directory.

One ``client`` record per client per round it was asked to train (from the DP metrics of its
reply), one ``client-evaluation`` record per client per round whose DP evaluation (or DP local
adaptation) it charged, and one ``client-level`` record per round when client-level DP is on.
A client record carries its run's whole privacy history (noise multiplier, sampling rate,
steps, merged per pair), so any accountant can recompute its epsilon. A resumed run may write
a round again; `read` keeps the last record of each (kind, client, round), `read_all` every
record as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedmirasol.privacy.release_log import unflatten

LEDGER_FILE = "privacy-ledger.jsonl"

CLIENT_FIELDS = ("round", "partition-id", "trained", "budget-exhausted", "round-steps",
                 "total-steps", "sample-rate", "noise-multiplier", "max-grad-norm", "delta",
                 "accountant", "epsilon", "budget", "unit", "history", "lifetime-epsilon",
                 "lifetime-delta")
CLIENT_KINDS = ("client", "client-evaluation")


def ledger_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LEDGER_FILE


def client_record(server_round: int, partition_id: int, metrics: Mapping[str, Any],
                  accountant: str, kind: str = "client") -> dict[str, Any]:
    """A ledger record from the ``dp-*`` metrics of a client's reply (see client_round)."""
    missing = [k for k in ("dp-epsilon", "dp-total-steps", "dp-sample-rate",
                           "dp-noise-multiplier", "dp-delta") if k not in metrics]
    if missing:
        raise ValueError(f"client {partition_id}'s reply for round {server_round} lacks the DP "
                         f"metrics {missing}")
    budget = float(metrics.get("dp-budget", 0.0))
    exhausted = bool(metrics.get("dp-budget-exhausted", 0))
    history = [list(entry) for entry in unflatten(metrics.get("dp-history", []))]
    return {
        "kind": kind, "round": int(server_round), "partition-id": int(partition_id),
        "trained": not exhausted and int(metrics.get("dp-round-steps", 0)) > 0,
        "budget-exhausted": exhausted,
        "round-steps": int(metrics.get("dp-round-steps", 0)),
        "total-steps": int(metrics["dp-total-steps"]),
        "sample-rate": float(metrics["dp-sample-rate"]),
        "noise-multiplier": float(metrics["dp-noise-multiplier"]),
        # None when the reply lacks it (NaN would make `append` refuse the record).
        "max-grad-norm": (float(metrics["dp-max-grad-norm"]) if "dp-max-grad-norm" in metrics
                          else None),
        "delta": float(metrics["dp-delta"]),
        "accountant": accountant,
        "epsilon": float(metrics["dp-epsilon"]),
        "budget": budget if budget > 0 else None,
        "unit": "user" if metrics.get("dp-user-level", 0) else "clip",
        "history": history,
        "lifetime-epsilon": (float(metrics["dp-lifetime-epsilon"])
                             if "dp-lifetime-epsilon" in metrics else None),
        "lifetime-delta": (float(metrics["dp-lifetime-delta"])
                           if "dp-lifetime-delta" in metrics else None),
    }


def client_level_record(server_round: int, *, epsilon: float, delta: float,
                        noise_multiplier: float, clip_norm: float, num_sampled: int,
                        num_clients: int) -> dict[str, Any]:
    """A ledger record of one noised aggregate under client-level DP."""
    return {"kind": "client-level", "round": int(server_round), "epsilon": float(epsilon),
            "delta": float(delta), "noise-multiplier": float(noise_multiplier),
            "clip-norm": float(clip_norm), "sampled-clients": int(num_sampled),
            "num-clients": int(num_clients), "sample-rate": num_sampled / num_clients,
            "unit": "client",
            "accountant": "rdp (flwr RdpAccountant, without replacement, replace-one)"}


def append(run_dir: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append records (one JSON object a line; NaN and inf are refused)."""
    lines = [json.dumps(dict(record), allow_nan=False, sort_keys=True) for record in records]
    if not lines:
        return
    path = ledger_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def read_all(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record as written, a repeated round's records included (what happened)."""
    path = ledger_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no privacy ledger ({LEDGER_FILE}); "
                                "was the run made with privacy.enabled = true?")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record, the last one of each (kind, client, round), in round order."""
    latest: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in read_all(run_dir):
        key = (record["kind"], int(record.get("partition-id", -1)), int(record["round"]))
        latest[key] = record
    return [latest[key] for key in sorted(latest, key=lambda k: (k[2], k[0], k[1]))]
