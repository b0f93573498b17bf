"""The real ClientApp and FederatedRun over secure aggregation's in-process Grid: three clients,
tiny model. Shared by the secure-aggregation app tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Collection

import pytest
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.runs import run_dir as rundir
from fedmirasol.engines.apps import build_client_app
from fedmirasol.config import load_config
from fedmirasol.secagg.identity import provision
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.local_grid import LocalGrid

NODES = [11, 12, 13]


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def secagg_config(rounds: int, **overrides: Any):
    """A run config for the three NODES with secure aggregation (threshold 2 of 3: at least
    2 contributors)."""
    base = {"num-rounds": rounds, "data.num-clients": 3, "data.clips-per-client": 6,
            "data.test-clips": 4, "model.num-frames": 8, "client.batch-size": 4,
            "client.local-epochs": 1, "client.threads": 1, "strategy.min-train-nodes": 2,
            "strategy.min-available-nodes": 2, "strategy.round-timeout": 60.0,
            "secagg.reconstruction-fraction": 0.6, "secagg.min-contributors": 2} | overrides
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])


def local_grid(**options: Any) -> LocalGrid:
    """The real ClientApp on the three NODES, with provisioned long-term identities."""
    return LocalGrid(build_client_app(identities=provision(len(NODES))),
                     {node: {"partition-id": i, "num-partitions": 3}
                      for i, node in enumerate(NODES)}, **options)


def run(cfg, run_dir: Path, grid: LocalGrid | None = None) -> FederatedRun:
    """Run `cfg` to the end over `grid` (a fresh local one by default), writing `run_dir`."""
    grid = grid or local_grid()
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    federated = FederatedRun(grid, cfg, run_dir)
    federated.run()
    return federated


def alter_replies(grid, stage: str, edit: Callable[[Message], None],  # noqa: ANN001
                  nodes: Collection[int] | None = None) -> None:
    """Replies of `stage` (from `nodes`, or from all) go through `edit` before the server
    reads them: a client that misbehaves in that stage."""
    original = grid.send_and_receive

    def send(messages, timeout=None):  # noqa: ANN001, ANN202
        replies = list(original(messages, timeout=timeout))
        for reply in replies:
            if reply.metadata.message_type == stage \
                    and (nodes is None or reply.metadata.src_node_id in nodes):
                edit(reply)
        return replies

    grid.send_and_receive = send
