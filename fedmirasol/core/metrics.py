"""Per-round metric records: per-client values, weighted means, bytes on the wire."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def wire_bytes(message: Message) -> int:
    """The bytes Flower sends for `message`: every object it is made of (the message with its
    metadata, its records, arrays and array chunks), serialized as Flower pushes them
    (`InflatableObject.deflate`), each distinct object once."""
    return sum(len(part.deflate()) for part in get_all_nested_objects(message).values())


@dataclass
class Traffic:
    """One round's bytes on the wire, per node: down (messages sent) and up (replies)."""

    down: Counter = field(default_factory=Counter)
    up: Counter = field(default_factory=Counter)

    def count(self, messages: Iterable[Message], replies: Iterable[Message]) -> None:
        for message in messages:
            self.down[message.metadata.dst_node_id] += wire_bytes(message)
        for reply in replies:
            self.up[reply.metadata.src_node_id] += wire_bytes(reply)

    def add(self, other: "Traffic") -> None:
        self.down.update(other.down)
        self.up.update(other.up)


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
