"""What a tracker logs of a round: the numbers of its metrics.jsonl record, named for dashboards,
and the privacy ledger's epsilon so far.

Every figure comes from the record itself (per-client figures from its `clients` rows), so a
tracker never holds a per-client figure that metrics.jsonl does not; the epsilons are the run's
worst client's and the client-level one, as `fedmirasol privacy-report` states them.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from fedmirasol.privacy.ledger import CLIENT_KINDS

# metrics.jsonl key -> tag; any other number in a record goes under "round/<key>".
TAGS = {
    "centralized_accuracy": "accuracy/centralized",
    "federated_accuracy": "accuracy/federated",
    "federated_accuracy_client_mean": "accuracy/federated_client_mean",
    "personal_accuracy_client_mean": "accuracy/personal_client_mean",
    "adapted_accuracy_client_mean": "accuracy/adapted_client_mean",
    "centralized_loss": "loss/centralized",
    "federated_loss": "loss/federated",
    "train_loss": "loss/train",
    "bytes_down": "communication/bytes_down",
    "bytes_up": "communication/bytes_up",
    "duration_s": "time/round_seconds",
    "skipped_files": "data/skipped_files",
}
# metrics.jsonl keys that list clients -> the tag of their count.
COUNTS = {"sampled": "clients/sampled", "participants": "clients/participants",
          "rejected": "clients/rejected", "evaluate_rejected": "clients/evaluate_rejected"}
WORST_CLIENT_EPSILON = "privacy/worst_client_epsilon"
CLIENT_LEVEL_EPSILON = "privacy/client_level_epsilon"
EPSILON_TAGS = (WORST_CLIENT_EPSILON, CLIENT_LEVEL_EPSILON)


def client_tag(partition_id: str | int, key: str) -> str:
    """The tag of a per-client figure: `client/<metric>/<partition id>`."""
    return f"client/{key}/{partition_id}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl record, by tag (None values, as in a round without
    centralized evaluation, are left out)."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if key in ("round", "clients"):
            continue
        if key in COUNTS and isinstance(value, (list, int)):  # a count where only aggregates
            scalars[COUNTS[key]] = float(value if isinstance(value, int) else len(value))
        elif _number(value):
            scalars[TAGS.get(key, f"round/{key}")] = float(value)
    for partition_id, row in record.get("clients", {}).items():
        scalars.update({client_tag(partition_id, key): float(value)
                        for key, value in row.items() if _number(value)})
    return scalars


def worst_client_epsilon(ledger: Iterable[Mapping[str, Any]], server_round: int
                         ) -> float | None:
    """The largest epsilon any client had spent by the end of `server_round` (None: no client
    record yet)."""
    spent = [r["epsilon"] for r in ledger
             if r["kind"] in CLIENT_KINDS and r["round"] <= server_round]
    return max(spent) if spent else None


def privacy_scalars(ledger: list[Mapping[str, Any]], server_round: int) -> dict[str, float]:
    """The worst client's epsilon and the client-level epsilon after `server_round`, from the
    privacy ledger's records (empty without DP)."""
    scalars: dict[str, float] = {}
    worst = worst_client_epsilon(ledger, server_round)
    if worst is not None:
        scalars[WORST_CLIENT_EPSILON] = float(worst)
    level = [r for r in ledger if r["kind"] == "client-level" and r["round"] <= server_round]
    if level:
        scalars[CLIENT_LEVEL_EPSILON] = float(max(level, key=lambda r: r["round"])["epsilon"])
    return scalars
