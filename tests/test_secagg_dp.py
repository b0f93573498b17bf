"""DP with secure aggregation: the real ClientApp and FederatedRun over an in-process Grid,
tiny model, three clients. Sample-level DP keeps its ledger and budget refusal under secagg
(an exhausted client adds nothing to the masked sum and the round completes); client-level DP
noises the secure sum exactly as the plain path noises its mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.runs import run_dir as rundir
from fedmirasol.server import loop as server_loop
from fedmirasol.config import load_config
from fedmirasol.privacy import client_level, ledger
from pretrained_fixtures import tiny_checkpoint
from fedmirasol.secagg import protocol
from secagg_app_fixtures import (  # noqa: F401
    NODES,
    alter_replies,
    local_grid,
    run,
    secagg_config,
    task_identity,
)

pytestmark = pytest.mark.slow
BUDGET, CLIP, Z = 10.0, 0.05, 1.0


def config(rounds: int, **overrides: object):
    return secagg_config(rounds, **({"data.clips-per-client": 8} | overrides))


@pytest.fixture(scope="module")
def sample_level(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rounds of DP-SGD + secagg + FedBN; partition 2 (4 training clips) fits one round
    of the budget, partitions 0 and 1 (10 and 5 clips) fit both."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    run_dir = tmp_path_factory.mktemp("sample-level")
    run(config(2, **{"data.partitioner": "quantity", "data.quantity-alpha": 1.0,
                     "data.min-partition-size": 4, "strategy.name": "fedbn",
                     "privacy.enabled": True, "privacy.budget-epsilon": BUDGET,
                     "secagg.enabled": True}), run_dir)
    return run_dir


def test_ledger_rows_and_growing_epsilon_under_secagg(sample_level: Path) -> None:
    rows = [r for r in ledger.read(sample_level) if r["kind"] == "client"]
    for pid in (0, 1):
        mine = [r for r in rows if r["partition-id"] == pid]
        assert [r["round"] for r in mine] == [1, 2] and all(r["trained"] for r in mine)
        assert 0 < mine[0]["epsilon"] < mine[1]["epsilon"] <= BUDGET


def test_an_exhausted_client_is_left_out_and_the_round_completes(sample_level: Path) -> None:
    first, refused = [r for r in ledger.read(sample_level)
                      if r["kind"] == "client" and r["partition-id"] == 2]
    assert (first["trained"], refused["trained"], refused["budget-exhausted"]) == (
        True, False, True)
    assert refused["epsilon"] == first["epsilon"] <= BUDGET
    rounds = {r["round"]: r for r in rundir.read_metrics(sample_level)}
    assert rounds[1]["participants"] == [0, 1, 2] and rounds[1]["budget_exhausted"] == []
    assert rounds[2]["sampled"] == [0, 1, 2] and rounds[2]["participants"] == [0, 1]
    assert rounds[2]["budget_exhausted"] == [2] and not rounds[2]["rejected"]
    assert rounds[2]["aggregate_kept_previous"] is None


def test_a_masked_update_without_dp_figures_stays_out_of_the_sum(tmp_path: Path) -> None:
    """Under DP-SGD nothing is aggregated whose spend the ledger cannot record, secagg or not."""
    grid = local_grid()
    alter_replies(grid, protocol.MASK,
                  lambda reply: reply.content.metric_records["metrics"].pop("dp-epsilon"),
                  [NODES[1]])
    run(config(1, **{"strategy.name": "fedavg", "privacy.enabled": True,
                     "secagg.enabled": True}), tmp_path, grid)
    (round_1,) = [r for r in rundir.read_metrics(tmp_path) if r["round"] == 1]
    assert round_1["participants"] == [0, 2] and round_1["aggregate_kept_previous"] is None
    assert [(r["partition-id"], r["reason"]) for r in round_1["rejected"]] == [
        (1, "secagg_mask: the reply carries no DP figures ('dp-epsilon') while privacy.enabled")]
    assert {r["partition-id"] for r in ledger.read(tmp_path) if r["kind"] == "client"} == {0, 2}


def test_client_level_draws_its_clients_from_a_secret_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling amplifies client-level privacy only if the draw cannot be recomputed from the
    run's seed (which every client receives)."""
    draws: list[int] = []
    monkeypatch.setattr(server_loop.secrets, "randbits",
                        lambda bits: draws.append(bits) or 12345)
    level = {"strategy.name": "fedavg", "strategy.fraction-train": 0.67,
             "privacy.client-level": True, "privacy.client-clip-norm": CLIP}
    run(config(2, **level), tmp_path / "level")
    assert draws == [64, 64]  # one secret draw per round
    run(config(2, **{"strategy.name": "fedavg"}), tmp_path / "plain")
    assert draws == [64, 64]  # without client-level DP the draw stays seeded (reproducible)


def test_client_level_secure_noised_mean_equals_the_plain_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stds: list[float] = []

    class RepeatableNoise:
        """A stand-in for the CSPRNG (which cannot be seeded): the same draws in both runs."""

        def normal_array(self, shape, std):  # noqa: ANN001, ANN201
            stds.append(std)
            return np.random.default_rng(0).normal(0.0, std, shape)

    monkeypatch.setattr(client_level, "SecureNoise", RepeatableNoise)
    level = {"strategy.name": "fedavg", "privacy.client-level": True,
             "privacy.client-clip-norm": CLIP, "privacy.client-noise-multiplier": Z}
    results = {}
    for name, secure in (("plain", False), ("secure", True)):
        results[name] = run(config(1, **level, **{"secagg.enabled": secure}), tmp_path / name)
    assert stds and all(std == pytest.approx(Z * CLIP / 3, rel=1e-12) for std in stds)
    plain, secure = results["plain"].global_shared, results["secure"].global_shared
    for name, value in plain.items():  # the same noise on the same clipped mean
        np.testing.assert_allclose(secure[name], value, atol=1e-5)
    records = {name: [r for r in ledger.read(tmp_path / name) if r["kind"] == "client-level"]
               for name in results}
    assert records["plain"] == records["secure"] and len(records["plain"]) == 1
    assert records["secure"][0]["epsilon"] > 0 and records["secure"][0]["sampled-clients"] == 3


def test_config_checks_dp_with_secagg(tmp_path: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "simulations" / "secagg.toml",
                      [f'pretrained.checkpoint="{tiny_checkpoint(tmp_path)}"'])
    assert cfg.privacy.enabled and cfg.secagg.enabled
    assert cfg.strategy.name == "fedbn"
    clipped = config(1, **{"secagg.enabled": True, "privacy.client-level": True,
                           "privacy.client-clip-norm": 0.7, "secagg.range": 0.5})
    assert clipped.secagg_bound() == 0.7  # under client-level DP the clip norm is the bound
    with pytest.raises(ValueError, match="secagg.range' must be > 0: the bound"):
        config(1, **{"secagg.enabled": True, "secagg.range": 0.0})  # no measured ranges
