"""Which node holds which partition, and a Grid view that lists nodes in partition order.

Node ids are random per run; partition ids are not. Listing nodes by partition id and seeding
the sampler per round makes client sampling (Flower's own, in the strategy) repeat exactly
in a resumed run.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid


class PartitionOrderedGrid:
    """Delegates to a Grid; `get_node_ids` lists nodes sorted by partition id."""

    def __init__(self, grid: Grid, partitions: dict[int, int]) -> None:
        self._grid = grid
        self._order = sorted(partitions, key=partitions.__getitem__)

    def get_node_ids(self) -> Iterable[int]:
        connected = set(self._grid.get_node_ids())
        return [node for node in self._order if node in connected]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def discover_partitions(grid: Grid, expected: int, config: ConfigRecord,
                        timeout: float = 120.0) -> tuple[dict[int, int], list[str]]:
    """Ask every node for its partition id: ({node id: partition id}, problems).

    Waits for `expected` nodes. A node that fails to answer is left out (and named in the
    problems); no answer at all, or two nodes claiming one partition, is an error.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {expected} nodes (data.num-clients) "
                               f"connected within {timeout:.0f} s")
        time.sleep(0.2)
    if len(node_ids) > expected:
        raise ValueError(f"{len(node_ids)} nodes are connected but data.num-clients is "
                         f"{expected}; make them equal")
    messages = [Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    partitions: dict[int, int] = {}
    problems: list[str] = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node}: {reply.error.reason}")
            continue
        partitions[node] = int(reply.content.metric_records["metrics"]["partition-id"])
    silent = set(node_ids) - {r.metadata.src_node_id for r in replies}
    problems += [f"node {node}: no reply" for node in sorted(silent)]
    duplicates = len(partitions) - len(set(partitions.values()))
    if duplicates:
        raise RuntimeError(f"{duplicates} node(s) claim a partition id another node holds")
    if not partitions:
        raise RuntimeError("node discovery failed: " + "; ".join(problems))
    return partitions, problems
