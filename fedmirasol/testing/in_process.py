"""The whole federated run in this process, over `LocalGrid` (tests and benchmarks: no Ray).

The same ServerApp loop (`FederatedRun`) and ClientApp (`build_client_app`) as a simulation,
with messages serialized as Flower serializes them; the virtual clients answer one after the
other. It takes the arguments of `fedmirasol.engines.simulation.simulate` that an audit passes
(`fedmirasol.engines.audit.privacy_audit(..., engine=run_in_process)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import RunConfig
from fedmirasol.engines.apps import build_client_app
from fedmirasol.engines.simulation import site_privacy_node_config
from fedmirasol.runs.resume import open_run
from fedmirasol.server.aggregators import Auditor
from fedmirasol.server.loop import FederatedRun, Progress
from fedmirasol.testing.local_grid import LocalGrid


def run_in_process(config: RunConfig, *, progress: Progress | None = None,
                   auditor: Auditor | None = None,
                   node_config: Mapping[str, Any] | None = None) -> Path:
    """Run `config` to the end over a LocalGrid of data.num-clients nodes; the run dir."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    opened = open_run(config)
    app = build_client_app(node_defaults={**site_privacy_node_config(config),
                                          **(node_config or {})})
    clients = config.data.num_clients
    grid = LocalGrid(app, {100 + i: {"partition-id": i, "num-partitions": clients}
                           for i in range(clients)})
    with opened.guard():
        FederatedRun(grid, opened.config, opened.run_dir, progress, auditor=auditor).run()
    return opened.run_dir
