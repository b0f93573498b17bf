"""Sending a round's messages and collecting the replies, with what went missing."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from fedmirasol.core.reply_checks import Rejection


def _pulls_replies(grid: Grid) -> bool:
    """Whether `grid` is one of Flower's own Grids (simulation engine, SuperLink), whose
    replies can be pulled one by one as they arrive, with send_and_receive not replaced."""
    from flwr.superlink.grid import HttpGrid, InMemoryGrid

    return isinstance(grid, (InMemoryGrid, HttpGrid)) and "send_and_receive" not in vars(grid)


def send_and_receive(grid: Grid, messages: list[Message], timeout: float,
                     on_reply: Callable[[Message], None] | None = None) -> list[Message]:
    """Flower's `Grid.send_and_receive` (push, then pull until every message has its reply
    or `timeout` has passed), telling `on_reply` of each reply as it arrives. Other Grids
    (test grids that answer in send_and_receive) reply all at once, then `on_reply` is told."""
    if on_reply is None or not _pulls_replies(grid):
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        for reply in replies if on_reply is not None else ():
            on_reply(reply)
        return replies
    pending = set(grid.push_messages(messages))
    interval = float(getattr(grid, "pull_interval", 1.0))  # the SuperLink's Grid: 1 s
    end = time.time() + timeout
    replies: list[Message] = []
    while pending and time.time() < end:
        arrived = list(grid.pull_messages(pending))
        for reply in arrived:
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            on_reply(reply)
        if pending:
            time.sleep(interval)
    return replies


def missing(messages: list[Message], replies: list[Message],
            partitions: Mapping[int, int], timeout: float) -> list[Rejection]:
    """The sent messages that got no reply within the round's timeout."""
    # The SuperLink answers for an unavailable node itself (its error reply comes from the
    # SuperLink's id, in reply to the message): such a node has answered, with that error.
    answered_nodes = {r.metadata.src_node_id for r in replies}
    answered_ids = {r.metadata.reply_to_message_id for r in replies}
    return [Rejection(m.metadata.dst_node_id, partitions.get(m.metadata.dst_node_id),
                      f"no reply within round-timeout ({timeout:.0f} s)")
            for m in messages if m.metadata.dst_node_id not in answered_nodes
            and not (m.metadata.message_id and m.metadata.message_id in answered_ids)]


def destinations(messages: list[Message]) -> dict[str, int]:
    """Sent message id -> the node it went to (to name the node behind a SuperLink error)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages
            if m.metadata.message_id}
