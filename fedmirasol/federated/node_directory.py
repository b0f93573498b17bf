"""Which node holds which partition, and a Grid view that lists nodes in partition order.

Node ids are random per run; partition ids are not. Listing nodes by partition id and seeding
the sampler per round makes client sampling (Flower's own, in the strategy) repeat exactly
in a resumed run.

A deployed federation learns each node's partition by asking it (one query message per node,
`discover_partitions`). Flower's simulation engine registers its nodes itself, node i for
partition i (its `node_config["partition-id"]`), one after another: there the order of the
nodes' registration times gives the partitions (`registered_partitions`). The server then
asks only as many nodes as the engine runs virtual clients at once (which starts their
processes before round 1), and their answers and every later reply, which names its
partition, check the order (`claimed_partition_problems`).
"""

from __future__ import annotations

import time
from datetime import datetime
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


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {expected} nodes (data.num-clients) "
                               f"connected within {timeout:.0f} s")
        time.sleep(0.05)
    if len(node_ids) > expected:
        raise ValueError(f"{len(node_ids)} nodes are connected but data.num-clients is "
                         f"{expected}; make them equal")
    return node_ids


def registered_partitions(grid: Grid, expected: int, timeout: float = 120.0
                          ) -> dict[int, int] | None:
    """{node id: partition id} in Flower's simulation engine, from registration order.

    The engine registers `expected` nodes one after another, the i-th for partition i; the
    Grid's `get_nodes()` tells each node's registration time. None when the Grid does not
    tell distinct registration times (then ask the nodes: `discover_partitions`).
    """
    node_ids = set(_wait_for_nodes(grid, expected, timeout))
    nodes = [node for node in grid.get_nodes() if node.node_id in node_ids]
    stamps = [node.registered_at for node in nodes]
    if len(nodes) != expected or not all(stamps) or len(set(stamps)) != expected:
        return None
    ordered = sorted(nodes, key=lambda node: datetime.fromisoformat(node.registered_at))
    return {node.node_id: pid for pid, node in enumerate(ordered)}


def claimed_partition_problems(replies: Iterable[Message], partitions: dict[int, int]
                               ) -> list[str]:
    """Replies whose own `partition-id` differs from the one their node is listed under."""
    problems = []
    for reply in replies:
        if not reply.has_content() or "metrics" not in reply.content.metric_records:
            continue
        claimed = reply.content.metric_records["metrics"].get("partition-id")
        node = reply.metadata.src_node_id
        if isinstance(claimed, (int, float)) and node in partitions \
                and int(claimed) != partitions[node]:
            problems.append(f"node {node} is listed as partition {partitions[node]} but "
                            f"replies as partition {int(claimed)}")
    return problems


def ask_partitions(grid: Grid, node_ids: Iterable[int], config: ConfigRecord,
                   timeout: float) -> tuple[dict[int, int], list[str]]:
    """Ask `node_ids` for their partition ids: ({node id: partition id}, problems: nodes
    that answered with an error or not at all)."""
    node_ids = list(node_ids)
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
    return partitions, problems


def discover_partitions(grid: Grid, expected: int, config: ConfigRecord,
                        timeout: float = 120.0) -> tuple[dict[int, int], list[str]]:
    """Ask every node for its partition id: ({node id: partition id}, problems).

    Waits for `expected` nodes. A node that fails to answer is left out (and named in the
    problems); no answer at all, or two nodes claiming one partition, is an error.
    """
    partitions, problems = ask_partitions(grid, _wait_for_nodes(grid, expected, timeout),
                                          config, timeout)
    duplicates = len(partitions) - len(set(partitions.values()))
    if duplicates:
        raise RuntimeError(f"{duplicates} node(s) claim a partition id another node holds")
    if not partitions:
        raise RuntimeError("node discovery failed: " + "; ".join(problems))
    return partitions, problems
