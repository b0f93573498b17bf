"""Per-round metric records: per-client values, weighted means, bytes on the wire."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import InflatableObject


def wire_bytes(message: Message) -> int:
    """The bytes Flower sends for `message`: every object it is made of (the message with its
    metadata, its records, arrays and array chunks), serialized as Flower pushes them
    (`InflatableObject.deflate`), each distinct object once."""
    return sum(_part_sizes(message, {}).values())


def _part_sizes(obj: InflatableObject, seen: dict[int, dict[str, int]]) -> dict[str, int]:
    """{object id: serialized size} of `obj` and of every object in it. `seen` holds the parts
    of the objects already measured (by Python identity): the messages of a round share the
    global model's record, which is then serialized once, not once a message."""
    if id(obj) in seen:
        return seen[id(obj)]
    sizes: dict[str, int] = {}
    for child in (obj.children or {}).values():
        sizes.update(_part_sizes(child, seen))
    sizes[obj.object_id] = len(obj.deflate())
    seen[id(obj)] = sizes
    return sizes


@dataclass
class Traffic:
    """One round's bytes on the wire, per node: down (messages sent) and up (replies)."""

    down: Counter = field(default_factory=Counter)
    up: Counter = field(default_factory=Counter)

    def count(self, messages: Iterable[Message], replies: Iterable[Message]) -> None:
        """Add each message's and reply's `wire_bytes` (an object several of them share is
        serialized once: the objects must not change during the call)."""
        seen: dict[int, dict[str, int]] = {}
        for message in messages:
            self.down[message.metadata.dst_node_id] += sum(_part_sizes(message, seen).values())
        for reply in replies:
            self.up[reply.metadata.src_node_id] += sum(_part_sizes(reply, seen).values())

    def counting(self, messages: list[Message]) -> "ExchangeCount":
        """Count an exchange of `messages` as its replies arrive (`ExchangeCount`)."""
        return ExchangeCount(self, messages)

    def add(self, other: "Traffic") -> None:
        self.down.update(other.down)
        self.up.update(other.up)


class ExchangeCount:
    """One exchange's bytes, counted into a `Traffic` while the clients still work: each reply
    as it arrives (`reply`; the server is then the only holder of the reply), the messages
    when the exchange is over (`finish`: until then the engine may be serializing them, and
    measuring fills caches inside Flower's objects). The counts are those of
    `Traffic.count(messages, replies)`."""

    def __init__(self, traffic: Traffic, messages: list[Message]) -> None:
        self.traffic = traffic
        self.messages = messages

    def reply(self, reply: Message) -> None:
        self.traffic.up[reply.metadata.src_node_id] += sum(_part_sizes(reply, {}).values())

    def finish(self) -> None:
        self.traffic.count(self.messages, [])


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
