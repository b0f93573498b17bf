"""Client dropout under secure aggregation: 30 % of the clients vanish in every round, each round
at another stage of the protocol. Every round completes or fails with its reason, and every
completed round moves the global model by exactly the survivors' weighted mean (within one
quantization step), recomputed in the clear from the run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmirasol.engines.apps import build_client_app
from fedmirasol.secagg.identity import provision
from fedmirasol.testing.dropout import AFTER_MASKING, STAGES, check_secure_means, drop_each_round
from fedmirasol.testing.local_grid import LocalGrid
from secagg_app_fixtures import run, secagg_config, task_identity  # noqa: F401

CLIENTS, FIRST_NODE = 7, 20


@pytest.mark.slow
def test_rounds_with_30_percent_dropouts_complete_with_the_survivors_exact_mean(
        tmp_path: Path) -> None:
    rounds = len(STAGES)  # every stage once
    config = secagg_config(rounds, **{
        "secagg.enabled": True, "data.num-clients": CLIENTS, "secagg.min-contributors": 3,
        "secagg.reconstruction-fraction": 0.51})
    grid = LocalGrid(build_client_app(identities=provision(CLIENTS)),
                     {FIRST_NODE + pid: {"partition-id": pid} for pid in range(CLIENTS)})
    plan = drop_each_round(grid, rounds, 0.3, seed=3)
    assert sorted(d.stage for d in plan.values()) == sorted(STAGES)
    run(config, tmp_path, grid)
    checks = check_secure_means(tmp_path, plan)
    assert [c.server_round for c in checks] == list(range(1, rounds + 1))
    for check in checks:
        assert check.ok, check
        if check.failure is None:
            dropped = {node - FIRST_NODE for node in check.dropout.nodes}
            inside = dropped <= set(check.participants) if check.dropout.stage in AFTER_MASKING \
                else not dropped & set(check.participants)
            assert inside, check  # masked before vanishing: in the sum; else: out of it
    assert sum(c.failure is None for c in checks) >= 3, checks
