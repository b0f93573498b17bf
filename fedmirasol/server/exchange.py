"""Sending a round's messages and collecting the replies, with what went missing."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from fedmirasol.core.packing import PackingError, pack, unpack
from fedmirasol.core.reply_checks import Rejection

log = logging.getLogger("fedmirasol.server")


class DeployedGrid:
    """Delegates to Flower's SuperLink Grid (`HttpGrid`, what a deployed ServerApp gets) with
    two changes on the wire: messages go with their arrays packed (one object per ArrayRecord,
    `fedmirasol.core.packing`; replies are unpacked), and `send_and_receive` pulls the
    replies every `pull_interval` seconds (`server.pull-interval`) instead of Flower's fixed
    3 s. Only the Grid's public `push_messages` / `pull_messages` are used."""

    def __init__(self, grid: Grid, pull_interval: float) -> None:
        self._grid = grid
        self.pull_interval = pull_interval

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        contents = [m.content if m.has_content() else None for m in messages]
        for message, content in zip(messages, contents):
            if content is not None:
                message.content = pack(content)
        try:
            return list(self._grid.push_messages(messages))
        finally:  # the caller keeps reading its messages as it built them
            for message, content in zip(messages, contents):
                if content is not None:
                    message.content = content

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content():
                try:
                    reply.content = unpack(reply.content)
                except PackingError as error:  # left packed: the reply checks reject it
                    log.warning("reply from node %s: %s", reply.metadata.src_node_id, error)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        return _push_and_pull(self, list(messages), timeout, self.pull_interval, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def for_deployment(grid: Grid, pull_interval: float) -> Grid:
    """`grid` as a DeployedGrid when it is the SuperLink's (the simulation engine's Grid
    passes messages in memory and pulls every 0.1 s; test grids answer in send_and_receive)."""
    from flwr.superlink.grid import HttpGrid

    if isinstance(grid, HttpGrid):
        return DeployedGrid(grid, pull_interval)  # type: ignore[return-value]
    return grid


def _pulls_replies(grid: Grid) -> bool:
    """Whether `grid` is one of Flower's own Grids (simulation engine, SuperLink), whose
    replies can be pulled one by one as they arrive, with send_and_receive not replaced."""
    from flwr.superlink.grid import HttpGrid, InMemoryGrid

    return isinstance(grid, DeployedGrid) or (
        isinstance(grid, (InMemoryGrid, HttpGrid)) and "send_and_receive" not in vars(grid))


def _push_and_pull(grid: Grid, messages: list[Message], timeout: float | None,
                   interval: float, on_reply: Callable[[Message], None] | None
                   ) -> list[Message]:
    """Push `messages`, then pull every `interval` s until each has its reply or `timeout`
    (None: no limit) has passed; `on_reply` is told of each reply as it arrives."""
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else time.time() + timeout
    replies: list[Message] = []
    while pending and (end is None or time.time() < end):
        arrived = list(grid.pull_messages(pending))
        for reply in arrived:
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            if on_reply is not None:
                on_reply(reply)
        if pending:
            time.sleep(interval)
    return replies


# Seconds between pulls of the simulation engine's replies (its Grid's own: 0.1 s). A pull
# there is a lookup in this process's memory (microseconds for a round's messages), and the
# last reply of a round waited half an interval on average before the server went on.
IN_MEMORY_PULL_S = 0.01


def pull_interval(grid: Grid) -> float:
    """Seconds between `grid`'s pulls for replies: IN_MEMORY_PULL_S for the simulation
    engine's Grid, else the Grid's `pull_interval` (a deployment's `server.pull-interval`)."""
    from flwr.superlink.grid import InMemoryGrid

    if isinstance(grid, InMemoryGrid):
        return IN_MEMORY_PULL_S
    return float(getattr(grid, "pull_interval", 1.0))


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
    return _push_and_pull(grid, messages, timeout, pull_interval(grid), on_reply)


def in_partition_order(replies: list[Message], partitions: Mapping[int, int]) -> list[Message]:
    """`replies` sorted by their sender's partition (unknown senders last, by node id), so that
    the aggregate's floating-point sums do not depend on which client answered first."""
    return sorted(replies, key=lambda r: (partitions.get(r.metadata.src_node_id, math.inf),
                                          r.metadata.src_node_id))


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
