"""Federated evaluation's results: what a round record shows of the clients' evaluation of the
new global model on their validation splits.

In the clear (`in_clear`) the server sees every client's figures and records them per client
with their means; under secure aggregation (`from_sums`) it sees only sums over the clients
(`fedmirasol.secagg.sums`) and records the same means, with no per-client row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from flwr.app import Message

from fedmirasol.core.metrics import client_metrics, mean, weighted_mean
from fedmirasol.core.reply_checks import Rejection
from fedmirasol.secagg.protocol import LOSS_CAP
from fedmirasol.secagg.sums import Sums
from fedmirasol.server.text_metrics import federated_text

# Personalization's per-client evaluation figures (fedmirasol.personalization.dispatch).
PERSONAL_EVAL_KEYS = ("personal-accuracy", "personal-loss", "adapted-accuracy", "adapted-loss")
PERSONAL_KINDS = ("personal", "adapted")
# What a secure evaluation sums, each clipped to [0, cap].
EVALUATION_FIGURES: tuple[tuple[str, float], ...] = tuple(
    (key, LOSS_CAP if key.endswith("loss") else 1.0)
    for key in ("val-loss", "val-accuracy", *PERSONAL_EVAL_KEYS))


@dataclass
class EvaluationOutcome:
    """A round's federated evaluation: the round record's fields and, in the clear, each
    client's figures by partition."""

    fields: dict[str, Any]
    rows: dict[int, dict[str, float]] = field(default_factory=dict)


def in_clear(accepted: Sequence[Message], rejected: Sequence[Rejection]) -> EvaluationOutcome:
    """Every client's figures, their weighted means and their means over clients."""
    rows = {int(row["partition-id"]): row for row in map(client_metrics, accepted)}
    return EvaluationOutcome({
        "federated_accuracy": weighted_mean(rows.values(), "val-accuracy"),
        "federated_loss": weighted_mean(rows.values(), "val-loss"),
        "federated_accuracy_client_mean": mean(r.get("val-accuracy") for r in rows.values()),
        **_personal_means(rows.values()),
        **federated_text(rows.values()),
        "evaluate_rejected": [r.to_json() for r in rejected],
    }, rows)


def from_sums(sums: Sums | None, rejected: Sequence[Rejection],
              failure: str | None) -> EvaluationOutcome:
    """The same means from secure sums (None when the secure evaluation failed, `failure`
    saying why)."""
    fields: dict[str, Any] = {
        "federated_accuracy": sums.weighted_mean("val-accuracy") if sums else None,
        "federated_loss": sums.weighted_mean("val-loss") if sums else None,
        "federated_accuracy_client_mean": sums.mean("val-accuracy") if sums else None,
        "evaluate_rejected": [r.to_json() for r in rejected],
        "evaluate_failed": failure,
    }
    for kind in PERSONAL_KINDS:
        value = sums.mean(f"{kind}-accuracy") if sums else None
        if value is not None:
            fields[f"{kind}_accuracy_client_mean"] = value
    return EvaluationOutcome(fields)


def _personal_means(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean client personalized/adapted accuracy, when clients report them."""
    rows = list(rows)
    return {f"{kind}_accuracy_client_mean": mean(r.get(f"{kind}-accuracy") for r in rows)
            for kind in PERSONAL_KINDS if any(f"{kind}-accuracy" in r for r in rows)}
