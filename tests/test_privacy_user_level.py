"""User-level DP (privacy.unit = "user"): a user's clips are sampled, clipped and accounted
together, so the reported epsilon is per user."""

from __future__ import annotations

import csv

import dp_accounting
import pytest
import torch
from flwr.app import RecordDict
from torch.utils.data import Subset

from fedmirasol.client import task as client_task
from fedmirasol.client.site import apply_site
from fedmirasol.config import load_config
from fedmirasol.core.parameters import model_state
from fedmirasol.data.media.synth import write_synthetic_media
from fedmirasol.privacy.accountant_state import new_accountant
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_training import train_private
from fedmirasol.privacy.release_log import ReleaseLog
from fedmirasol.task import data as client_data
from privacy_fixtures import clips, sgd, snapshot, tiny_model


def moved(before: dict, after: dict) -> float:
    return float(torch.cat([(after[k] - before[k]).flatten() for k in before]).norm())


@pytest.mark.parametrize("groups, rows", [([0] * 8, 1), (list(range(8)), 8)])
def test_a_users_whole_contribution_is_clipped_once(groups, rows) -> None:
    """Eight copies of one clip, every gradient far above the clip norm: as one user they are
    one clipped row (the step is C / 1 user), as eight users eight rows (8 C / 8 users); as
    clips of one user without per-user clipping the step would be 8 C."""
    model, clip = tiny_model(), 0.01
    data = Subset(clips(1), [0] * 8)
    before = snapshot(model)
    plan = SamplingPlan.for_round(len(set(groups)), len(set(groups)), 1)  # q = 1
    train_private(model, data, sgd(model, lr=1.0), accountant=new_accountant("rdp"), plan=plan,
                  epochs=1, noise_multiplier=0.0, max_grad_norm=clip, groups=groups,
                  clips_per_user=8, generator=torch.Generator().manual_seed(0),
                  noise_generator=torch.Generator().manual_seed(1))
    assert 0.9 * clip <= moved(before, snapshot(model)) <= clip * (1 + 1e-4)


def test_clips_per_user_bounds_how_many_of_a_users_clips_a_step_reads() -> None:
    from fedmirasol.privacy.dp_training import SecurePoissonSampler

    sampler = SecurePoissonSampler(10, 1.0, noise=None, generator=torch.Generator().manual_seed(0),
                                   groups=[0] * 7 + [1, 1, 2], clips_per_user=3)
    batch = sampler.draw()
    assert sorted(batch)[-3:] == [7, 8, 9] and len(batch) == 3 + 2 + 1
    assert len(set(batch)) == len(batch)


def test_user_level_epsilon_is_per_user_and_matches_dp_accounting() -> None:
    config = load_config(None, [
        "data.num-clients=2", "data.clips-per-client=24", "data.test-clips=4",
        "model.num-frames=8", "client.batch-size=3", "client.local-epochs=1",
        "data.clips-per-user=3", "privacy.enabled=true", "privacy.unit='user'",
        "privacy.noise-multiplier=1.2", "privacy.clips-per-user=2"])
    data = client_data.client_data(config, 0)
    users = len(set(data.users))
    assert users < len(data.train)  # clips share users
    model, _, split = client_task.model_and_split(config)
    state = RecordDict()
    log = ReleaseLog.in_state(state)
    result = client_task.train(config, 0, 1, model_state(model, split.shared), state,
                               privacy_log=log)
    q = 3 / users
    steps = int(1 / q) + 1  # one epoch of user-level DP-SGD and the DP loss figures
    assert result.metrics["dp-sample-rate"] == pytest.approx(q)
    assert result.metrics["dp-user-level"] == 1 and log.units() == {"user"}
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.2)),
                      steps)
    assert result.metrics["dp-epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=0.01)


def test_the_manifest_user_column_groups_a_sites_clips(tmp_path) -> None:
    config = load_config(None, ["data.num-clients=1", "model.num-frames=8", "data.val-fraction=0",
                                "strategy.min-train-nodes=1", "strategy.min-available-nodes=1",
                                "strategy.min-evaluate-nodes=1", "data.source='site'"])
    manifest = write_synthetic_media(tmp_path, 4, config.model.mirasol)
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "user"])
        writer.writeheader()
        writer.writerows({**row, "user": "ana" if i < 3 else "ben"} for i, row in enumerate(rows))
    site = apply_site(config, {"partition-id": 0, "data.manifest": str(manifest)})
    data = client_data.client_data(site, 0)
    assert sorted(data.users) == ["ana", "ana", "ana", "ben"]
