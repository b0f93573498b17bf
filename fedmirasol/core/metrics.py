"""Per-round metric records: per-client values, weighted means, byte counts."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from flwr.app import ArrayRecord, Message


def array_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord (the arrays' serialized data)."""
    return int(sum(len(array.data) for array in record.values()))


def message_array_bytes(messages: Iterable[Message]) -> int:
    """Array payload bytes over messages (replies with errors carry none)."""
    total = 0
    for message in messages:
        if message.has_content():
            total += sum(array_bytes(r) for r in message.content.array_records.values())
    return total


def client_metrics(message: Message) -> dict[str, float]:
    """A reply's metric record as plain floats, keyed by metric name."""
    metrics = message.content.metric_records["metrics"]
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float))}


def weighted_mean(rows: Iterable[Mapping[str, Any]], key: str,
                  weight_key: str = "num-examples") -> float | None:
    """Mean of `key` weighted by `weight_key`, over rows that have both; None if none do."""
    total = weight = 0.0
    for row in rows:
        if key in row and weight_key in row and math.isfinite(row[key]):
            total += row[key] * row[weight_key]
            weight += row[weight_key]
    return total / weight if weight > 0 else None


def mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None
