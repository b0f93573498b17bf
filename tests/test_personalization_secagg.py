"""Personalization under secure aggregation: the real ClientApp and FederatedRun over the
in-process Grid. Only the shared parameters are masked and aggregated (FedPer's head never
reaches the server), the secure round lands where the plain one does, and the clients'
personalized accuracy is recorded either way (under secure aggregation as a secure mean over
the clients, with no per-client figure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.runs import run_dir as rundir
from fedmirasol.engines.apps import build_client_app
from fedmirasol.config import load_config
from fedmirasol.server.loop import FederatedRun
from fedmirasol.secagg.identity import provision
from fedmirasol.testing.local_grid import LocalGrid

NODES = [21, 22, 23]


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def one_round(method: str, secure: bool, run_dir: Path) -> tuple[FederatedRun, dict]:
    settings = {"num-rounds": 1, "data.num-clients": 3, "data.clips-per-client": 8,
                "data.test-clips": 4, "model.num-frames": 8, "client.batch-size": 4,
                "client.local-epochs": 1, "data.partitioner": "pathological",
                "strategy.round-timeout": 60.0, "secagg.reconstruction-fraction": 0.6,
                "secagg.min-contributors": 2,
                "secagg.enabled": secure, "personalization.method": method}
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, cfg)
    grid = LocalGrid(build_client_app(identities=provision(3)),
                     {node: {"partition-id": i, "num-partitions": 3}
                      for i, node in enumerate(NODES)})
    federated = FederatedRun(grid, cfg, run_dir)
    federated.run()
    return federated, rundir.read_metrics(run_dir)[-1]


@pytest.mark.parametrize("method", ["fedper", "ditto"])
def test_secure_personalized_round_matches_the_plain_one(tmp_path: Path, method: str) -> None:
    plain, plain_record = one_round(method, False, tmp_path / "plain")
    secure, record = one_round(method, True, tmp_path / "secure")
    assert record["aggregate_kept_previous"] is None and record["participants"] == [0, 1, 2]
    assert all("personal_accuracy" in row for row in plain_record["clients"].values())
    assert not any("personal_accuracy" in row for row in record["clients"].values())
    assert record["evaluate_failed"] is None
    for key in ("personal_accuracy_client_mean", "federated_accuracy", "federated_loss"):
        assert record[key] == pytest.approx(plain_record[key], abs=1e-3), key
    head = [name for name in plain.global_shared if name.startswith("classifier.")]
    assert (head == []) == (method == "fedper")  # FedPer's head is not aggregated at all
    for name, value in plain.global_shared.items():
        np.testing.assert_allclose(secure.global_shared[name], value, atol=2e-4)
