"""FLTrust (`strategy.name = "fltrust"`): the server's root data as the trust anchor.

- a sign-flipped update scores 0 against the reference and leaves the aggregate, which has the
  reference's norm and the honest updates' direction, where FedAvg follows the attackers;
- no positive score keeps the previous model;
- the root data is disjoint from the clients' pool and the test set;
- the config refuses the combinations where the server cannot see each update, by name;
- end to end, the round's record names the sign-flipper's score 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import load_config
from fedmirasol.engines.apps import build_client_app
from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.server.aggregators import choose_aggregator
from fedmirasol.server.aggregators.fltrust import FLTrustMean, ReferenceTrainer, trusted_mean
from fedmirasol.server.loop import FederatedRun
from fedmirasol.task import data as task_data
from fedmirasol.testing.dropout import initial_shared
from fedmirasol.testing.local_grid import LocalGrid

TINY = {"num-rounds": 1, "data.num-clients": 4, "data.clips-per-client": 6,
        "data.test-clips": 8, "model.num-frames": 8, "client.batch-size": 4,
        "client.local-epochs": 1, "client.threads": 1, "output.plots": False,
        "strategy.name": "fltrust", "defense.root-clips": 8}
SHAPES = {"a": (3, 2), "b": (5,)}


def config(**settings: object):
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in (TINY | settings).items()])


def norm(values: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in values.values()))


def test_a_sign_flipped_update_scores_zero_and_the_aggregate_follows_the_honest_ones() -> None:
    rng = np.random.default_rng(0)
    direction = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    honest = [{k: (scale * v + rng.normal(0, 0.1, v.shape)).astype(np.float32)
               for k, v in direction.items()} for scale in (1.0, 2.0, 0.5, 4.0)]
    flipped = [{k: -10 * v for k, v in u.items()} for u in honest[:2]]
    reference = {k: 0.3 * v for k, v in direction.items()}
    combined, scores = trusted_mean(reference, honest + flipped)
    assert scores[4:] == [0.0, 0.0] and all(s > 0.9 for s in scores[:4])
    # every update rescaled to the reference's norm: their weighted mean is no longer than it
    assert 0.95 * norm(reference) < norm(combined) <= norm(reference) * (1 + 1e-6)
    honest_rescaled = [{k: v * norm(reference) / norm(u) for k, v in u.items()} for u in honest]
    weights = np.array(scores[:4]) / sum(scores[:4])
    for k in SHAPES:
        np.testing.assert_allclose(
            combined[k], sum(w * u[k] for w, u in zip(weights, honest_rescaled)), rtol=1e-5)
    fedavg = {k: np.mean([u[k] for u in honest + flipped], axis=0) for k in SHAPES}
    cosine = sum(float(np.sum(fedavg[k] * direction[k])) for k in SHAPES)
    assert cosine < 0  # the plain mean follows the two attackers


def test_no_positive_score_means_no_aggregate() -> None:
    reference = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    against = [{k: -v for k, v in reference.items()}, {k: np.zeros(s, np.float32)
                                                       for k, s in SHAPES.items()}]
    combined, scores = trusted_mean(reference, against)
    assert combined is None and scores == [0.0, 0.0]


def test_the_reference_update_trains_on_root_clips_no_client_or_test_clip_shares() -> None:
    cfg = config()
    root = task_data.root_dataset(cfg)
    assert len(root) == 8
    others = [task_data.test_dataset(cfg)[i]["video"] for i in range(8)]
    for pid in range(4):
        data = task_data.client_data(cfg, pid)
        others += [data.train[i]["video"] for i in range(len(data.train))]
    for i in range(len(root)):
        assert not any(torch.equal(root[i]["video"], clip) for clip in others)
    shared = initial_shared(cfg)
    trainer = ReferenceTrainer(cfg)
    first = trainer.update(shared, 1)
    assert set(first) == set(shared) and norm(first) > 0
    again = ReferenceTrainer(cfg).update(shared, 1)  # seeded by (run seed, round)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    assert isinstance(choose_aggregator(cfg, shared), FLTrustMean)


def test_config_refuses_fltrust_where_the_server_cannot_score_each_update() -> None:
    cases = {
        "cannot be combined with secagg.enabled": {"secagg.enabled": True},
        "cannot be combined with he.enabled": {"he.enabled": True, "server.evaluate-every": 0},
        "cannot be combined with privacy.client-level": {"privacy.client-level": True},
        "data.source = 'leaf'": {"data.source": "leaf", "data.leaf-path": "/nowhere"},
        "not with pretrain.objective": {"pretrain.objective": "videomae"},
    }
    for words, settings in cases.items():
        with pytest.raises(ConfigError, match=words):
            config(**settings)
    assert config(**{"privacy.enabled": True}).strategy.name == "fltrust"  # DP-SGD composes
    assert config(**{"compression.codec": "quantize"}).strategy.name == "fltrust"


@pytest.mark.slow
def test_a_sign_flipper_scores_zero_in_the_rounds_record(tmp_path: Path) -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = config(**{"attack.kind": "sign-flip", "attack.clients": "1"})
    rundir.write_config(tmp_path, cfg)
    grid = LocalGrid(build_client_app(), {10 + pid: {"partition-id": pid} for pid in range(4)})
    FederatedRun(grid, cfg, tmp_path).run()
    record = rundir.read_metrics(tmp_path)[-1]
    scores = record["fltrust_scores"]
    assert set(scores) == {"0", "1", "2", "3"} and scores["1"] == 0.0
    assert all(scores[p] > 0 for p in ("0", "2", "3"))
    assert record["fltrust_reference_norm"] > 0 and record["aggregate_kept_previous"] is None
