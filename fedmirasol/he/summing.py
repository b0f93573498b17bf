"""The server's one operation on ciphertexts: adding the replies' batches.

Batch by batch: only one batch of each reply is deserialized at a time; the sum is serialized
as it is made. A reply whose ciphertexts do not load or add (malformed, another scale, other
parameters) is left out and the sum made again without it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fedmirasol.he.ckks import ServerContext
from fedmirasol.he.wire import Header, batch_bytes


class _BadReply(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


def _sum_batch(context: ServerContext, replies: Sequence[Mapping[str, Any]],
               members: Sequence[int], index: int, expected: int) -> bytes:
    total: list[Any] | None = None
    for member in members:
        try:
            ciphertexts = context.load(batch_bytes(replies[member], index))
            if len(ciphertexts) != expected:
                raise ValueError(f"batch {index} holds {len(ciphertexts)} ciphertexts, "
                                 f"expected {expected}")
            if total is None:
                total = ciphertexts
            else:
                context.add(total, ciphertexts)
        except ValueError as error:
            raise _BadReply(member, str(error)) from None
    assert total is not None
    return context.save(total)


def sum_replies(context: ServerContext, header: Header, replies: Sequence[Mapping[str, Any]]
                ) -> tuple[list[bytes], list[int], dict[int, str]]:
    """The batches of the sum of `replies` (their arrays, all with `header`'s layout), the
    indices of the replies inside it, and why the others were left out."""
    left_out: dict[int, str] = {}
    while True:
        members = [i for i in range(len(replies)) if i not in left_out]
        if not members:
            return [], [], left_out
        try:
            batches = [_sum_batch(context, replies, members, b,
                                  min(header.batch, header.ciphertexts - b * header.batch))
                       for b in range(header.batches)]
            return batches, members, left_out
        except _BadReply as bad:
            left_out[bad.index] = bad.reason
