"""Check every client reply before it can reach aggregation.

A reply is rejected, with its reason, when it carries an error, lacks the update or its
metrics, has missing or unexpected keys, wrong shapes or dtypes, NaN or Inf values, or a
non-positive example count (or one over the run's bound, `weight_problem`). Rejected replies
are never aggregated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from fedmirasol.core.packing import is_packed

UPDATE_DTYPE = np.dtype(np.float32)
WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class Rejection:
    node_id: int
    partition_id: int | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"node-id": self.node_id, "partition-id": self.partition_id, "reason": self.reason}


def error_reason(message: Message, limit: int = 300) -> str:
    """A client error's reason, without the transport's traceback around it."""
    reason = str(message.error.reason)
    if "Message:" in reason:  # Ray wraps the ClientApp's exception message
        reason = reason.rsplit("Message:", 1)[1]
    reason = " ".join(reason.split())
    return f"client error: {reason[:limit]}"


def _metrics(content: RecordDict) -> Mapping[str, object] | None:
    return content.metric_records.get("metrics")


def reply_partition(message: Message, partitions: Mapping[int, int]) -> int | None:
    """The partition a reply comes from (by its node), or None when unknown."""
    return partitions.get(message.metadata.src_node_id)


def check_metrics(content: RecordDict, required: Iterable[str]) -> str | None:
    metrics = _metrics(content)
    if metrics is None:
        return "reply has no 'metrics' record"
    for key in required:
        if key not in metrics:
            return f"metrics lack {key!r}"
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"metric {key!r} is {value}"
    weight = metrics.get(WEIGHT_KEY)
    if weight is not None and (not isinstance(weight, (int, float)) or weight <= 0):
        return f"{WEIGHT_KEY!r} must be a positive number, got {weight!r}"
    return None


def check_update(content: RecordDict, expected: Mapping[str, tuple[int, ...]],
                 ahead: ArrayChecks | None = None) -> str | None:
    """Why the update (``arrays``) in `content` is unusable, or None when it is fine
    (`ahead`: the arrays' checks of replies done as they arrived)."""
    if is_packed(content):  # the server could not unpack it (fedmirasol.core.packing)
        return "reply's arrays arrived packed with a description that does not fit their bytes"
    records = content.array_records
    if set(records) != {"arrays"}:
        return f"reply must carry exactly one array record 'arrays', got {sorted(records)}"
    update = records["arrays"]
    missing = [key for key in expected if key not in update]
    if missing:
        return f"update lacks {len(missing)} parameter(s), e.g. {missing[0]!r}"
    unexpected = [key for key in update if key not in expected]
    if unexpected:
        return f"update has {len(unexpected)} unexpected parameter(s), e.g. {unexpected[0]!r}"
    return ahead.problem(update) if ahead is not None else array_problem(update, expected)


def array_problem(update: ArrayRecord, expected: Mapping[str, tuple[int, ...]],
                  decoded: dict[str, np.ndarray] | None = None) -> str | None:
    """Why the arrays of `update` (which has the `expected` keys) are unusable: a wrong shape
    or dtype, bytes that do not decode, NaN or Inf values; None when they are fine. `decoded` receives the arrays as
    they are read."""
    for key, shape in expected.items():
        array = update[key]
        if tuple(array.shape) != tuple(shape):
            return f"parameter {key!r} has shape {tuple(array.shape)}, expected {tuple(shape)}"
        try:
            values = array.numpy()
        except (ValueError, TypeError, EOFError) as error:  # bytes that are no such array
            return f"parameter {key!r} cannot be decoded: {error}"
        if values.dtype != UPDATE_DTYPE:
            return f"parameter {key!r} has dtype {values.dtype}, expected {UPDATE_DTYPE}"
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"parameter {key!r} holds {bad} NaN/Inf value(s)"
        if decoded is not None:
            decoded[key] = values
    return None


# At most this many bytes of decoded updates are kept between their check and the aggregate
# (beyond it an update is decoded again there, as Flower's strategies do).
KEEP_DECODED_BYTES = 512 * 2**20


class ArrayChecks:
    """The array checks of train replies' updates (`array_problem`), done as the replies
    arrive while the round's other clients still train, and their decoded arrays: looked up
    when the replies are screened and aggregated. An update is known by its ArrayRecord's
    identity (one replaced since, e.g. a compressed update decoded, is checked afresh). Holds
    what it checked until `clear`; decoded arrays up to `keep_bytes` in all."""

    def __init__(self, expected: Mapping[str, tuple[int, ...]],
                 keep_bytes: int = KEEP_DECODED_BYTES) -> None:
        self.expected = expected
        self.keep_bytes = keep_bytes
        self.kept_bytes = 0
        self.done: dict[int, tuple[ArrayRecord, str | None, dict[str, np.ndarray] | None]] = {}

    def check(self, content: RecordDict) -> None:
        """Check the arrays of `content` now, if it carries an update of the expected keys."""
        update = content.array_records.get("arrays")
        if update is None or is_packed(content) or set(update) != set(self.expected):
            return
        decoded: dict[str, np.ndarray] = {}
        problem = array_problem(update, self.expected, decoded)
        size = sum(values.nbytes for values in decoded.values())
        keep = problem is None and self.kept_bytes + size <= self.keep_bytes
        self.kept_bytes += size if keep else 0
        self.done[id(update)] = (update, problem, decoded if keep else None)

    def _done(self, update: ArrayRecord
              ) -> tuple[ArrayRecord, str | None, dict[str, np.ndarray] | None] | None:
        done = self.done.get(id(update))
        return done if done is not None and done[0] is update else None

    def problem(self, update: ArrayRecord) -> str | None:
        """`array_problem(update, expected)`, from the check done ahead where there was one."""
        done = self._done(update)
        return done[1] if done is not None else array_problem(update, self.expected)

    def decoded(self, update: ArrayRecord) -> dict[str, np.ndarray] | None:
        """The arrays of `update` as its check read them (None: not kept, or not checked)."""
        done = self._done(update)
        return done[2] if done is not None else None

    def clear(self) -> None:
        self.done.clear()
        self.kept_bytes = 0


def weight_problem(content: RecordDict, max_weight: int) -> str | None:
    """Why a reply's weight (its example count) is over `max_weight`, or None."""
    metrics = _metrics(content)
    weight = metrics.get(WEIGHT_KEY) if metrics is not None else None
    if isinstance(weight, (int, float)) and weight > max_weight:
        return (f"{WEIGHT_KEY} {weight:g} exceeds strategy.max-num-examples = {max_weight} "
                "(one client's weight is bounded, so it cannot outweigh the others)")
    return None


def _split_replies(
    replies: Iterable[Message], partitions: Mapping[int, int],
    check: Callable[[Message], str | None], destinations: Mapping[str, int] | None = None,
) -> tuple[list[Message], list[Rejection]]:
    """Replies that are errors or fail `check` become rejections (with reasons); the rest pass.

    `destinations` (sent message id -> node) names the node behind an error reply that the
    SuperLink sent in its place (e.g. "Node Unavailable")."""
    accepted, rejected = [], []
    for message in replies:
        node = (destinations or {}).get(message.metadata.reply_to_message_id,
                                        message.metadata.src_node_id)
        reason = error_reason(message) if message.has_error() else check(message)
        if reason is None:
            accepted.append(message)
        else:
            rejected.append(Rejection(node, partitions.get(node), reason))
    return accepted, rejected


def validate_train_replies(
    replies: Iterable[Message], expected: Mapping[str, tuple[int, ...]],
    partitions: Mapping[int, int], destinations: Mapping[str, int] | None = None,
    ahead: ArrayChecks | None = None,
) -> tuple[list[Message], list[Rejection]]:
    """Split train replies into usable ones and rejections (with reasons); `ahead`: the
    updates' array checks done as the replies arrived."""
    return _split_replies(replies, partitions, lambda message: (
        check_metrics(message.content, (WEIGHT_KEY, "partition-id"))
        or check_update(message.content, expected, ahead)), destinations)


EVALUATE_KEYS = (WEIGHT_KEY, "partition-id", "val-loss", "val-accuracy")


def validate_evaluate_replies(
    replies: Iterable[Message], partitions: Mapping[int, int],
    destinations: Mapping[str, int] | None = None, max_weight: int | None = None,
    required: Iterable[str] = EVALUATE_KEYS,
) -> tuple[list[Message], list[Rejection]]:
    """Split evaluate replies into usable ones and rejections (with reasons); `required`:
    the metrics every reply must carry (under DP a client may release no figure at all);
    with `max_weight`, an example count over it is rejected too."""
    required = tuple(required)
    return _split_replies(replies, partitions, lambda message: check_metrics(
        message.content, required)
        or (weight_problem(message.content, max_weight) if max_weight is not None
            and WEIGHT_KEY in message.content.metric_records.get("metrics", {}) else None),
        destinations)
