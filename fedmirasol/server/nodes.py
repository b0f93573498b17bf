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

from fedmirasol.errors import ConfigError


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


# Flower's strategies list the nodes twice to draw a round's clients (count, then sample) and,
# while too few are connected, list them again every second: a listing younger than this is
# reused, one that old is taken afresh (so a strategy waiting for nodes still sees them come).
LISTING_REUSE_S = 0.5


class ListedOnce:
    """Delegates to a Grid; `get_node_ids` reuses its listing while it is younger than
    LISTING_REUSE_S. Listing the nodes costs O(federation size) in Flower's engines (every
    node's record is checked): one listing serves a phase's count and draw."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self._listed: list[int] | None = None
        self._listed_at = 0.0

    def get_node_ids(self) -> list[int]:
        now = time.monotonic()
        if self._listed is None or now - self._listed_at >= LISTING_REUSE_S:
            self._listed, self._listed_at = list(self._grid.get_node_ids()), now
        return list(self._listed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


# Flower's simulation engine registers all its nodes at once, right after the ServerApp starts:
# once some are there and their count has not changed for this long, that is the federation.
SIMULATION_SETTLE_S = 2.0
SIMULATION_FIRST_NODE_S = 60.0  # the engine registers its nodes before it starts Ray


def is_simulation_grid(grid: Grid) -> bool:
    """Whether `grid` is Flower's simulation engine's (in-memory) Grid, whose nodes are all
    registered at the start (`flwr run` on a local simulation SuperLink, `run_simulation`)."""
    from flwr.superlink.grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


class NodeCountMismatch(ConfigError):
    """The federation's node count differs from `data.num-clients` (a config error)."""


def node_count_message(connected: int, expected: int, simulation: bool,
                       waited: float | None = None) -> str:
    """What to change when `connected` nodes are there and data.num-clients is `expected`."""
    if simulation:
        return (f"the simulation federation has {connected} SuperNode(s) but data.num-clients "
                f"is {expected}; make them equal: run `flwr run . --federation-config "
                f"\"num-supernodes={expected}\"` (Flower's default is 2), or set "
                f"data.num-clients={connected} (`--run-config \"data.num-clients={connected}\"`)")
    within = f" within {waited:.0f} s" if waited is not None else ""
    return (f"{connected} node(s) connected{within} but data.num-clients is {expected}; "
            f"start {expected} SuperNodes (in a local simulation: `flwr run . "
            f"--federation-config \"num-supernodes={expected}\"`), or set data.num-clients to "
            f"the federation's node count")


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """The node ids once `expected` nodes are connected.

    Flower's simulation engine registers its nodes all at once: a count that differs and stays
    the same for SIMULATION_SETTLE_S is the federation's size, and a NodeCountMismatch within
    seconds. Deployed SuperNodes connect when their sites start them: wait up to `timeout`.
    """
    simulation = is_simulation_grid(grid)
    started = time.monotonic()
    deadline = started + (min(timeout, SIMULATION_FIRST_NODE_S) if simulation else timeout)
    count, since = -1, started
    while len(node_ids := list(grid.get_node_ids())) < expected:
        now = time.monotonic()
        if len(node_ids) != count:
            count, since = len(node_ids), now
        if simulation and count > 0 and now - since >= SIMULATION_SETTLE_S:
            raise NodeCountMismatch(node_count_message(count, expected, True))
        if now > deadline:
            raise NodeCountMismatch(node_count_message(len(node_ids), expected, simulation,
                                                       waited=now - started))
        time.sleep(0.05)
    if len(node_ids) > expected:
        raise NodeCountMismatch(node_count_message(len(node_ids), expected, simulation))
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
