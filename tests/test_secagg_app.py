"""Secure aggregation inside the app: the real ClientApp and FederatedRun over an in-process
Grid, tiny model. One round of FedBN (and of FedAdam) with secure aggregation moves the global
model where the same round without it does (within quantization error); too many dropouts
fail a round with its reason in metrics.jsonl and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmirasol.server.loop import FederatedRun
from fedmirasol.secagg import protocol
from secagg_app_fixtures import NODES, local_grid, run, secagg_config, task_identity  # noqa: F401

config = secagg_config


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["fedbn", "fedadam"])
def test_secure_round_matches_the_plain_round(tmp_path: Path, strategy: str) -> None:
    plain = run(config(1, **{"strategy.name": strategy}), tmp_path / "plain")
    secure = run(config(1, **{"strategy.name": strategy, "secagg.enabled": True}),
                 tmp_path / "secure")
    record = metrics(tmp_path / "secure")[-1]
    assert record["aggregate_kept_previous"] is None and record["participants"] == [0, 1, 2]
    assert plain.global_shared.keys() == secure.global_shared.keys()
    if strategy == "fedbn":
        assert not any("norm" in name for name in secure.global_shared)
    for name, value in plain.global_shared.items():
        np.testing.assert_allclose(secure.global_shared[name], value, atol=2e-4)
    initial = FederatedRun(local_grid(), config(1, **{"strategy.name": strategy}),
                           tmp_path / "init").global_shared
    moved = max(float(np.abs(plain.global_shared[k] - v).max()) for k, v in initial.items())
    assert moved > 1e-3  # the round did move the model


def test_too_many_dropouts_fail_a_round_and_the_run_goes_on(tmp_path: Path) -> None:
    grid = local_grid()
    grid.drop(NODES[:2], protocol.MASK, group_id="1")
    run(config(2, **{"secagg.enabled": True}), tmp_path, grid)
    first, second = metrics(tmp_path)[1:]
    assert "secure aggregation failed: too many clients dropped" in \
        first["aggregate_kept_previous"]
    assert {r["partition-id"] for r in first["rejected"]} == {0, 1}
    assert second["aggregate_kept_previous"] is None and second["participants"] == [0, 1, 2]
