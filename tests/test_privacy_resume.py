"""Accounting is monotonic: whatever a client or the server released stays accounted after any
crash, resume or restart; a restored state is never older than the newest one written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from fedmirasol.config import load_config
from fedmirasol.privacy.server_side import ServerPrivacy
from test_federated_messages import reply, tiny_config, train_message

DP = {"privacy.enabled": "true", "privacy.noise-multiplier": 1.0, "client.local-epochs": 1}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class Site:
    """One client site with its own state-dir; `restart()` is a new SuperNode process."""

    def __init__(self, root: Path) -> None:
        self.node = {"partition-id": 0, "num-partitions": 2, "state-dir": str(root)}
        self.restart()

    def restart(self) -> None:
        self.context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                               node_config=self.node)

    def train(self, config, server_round: int) -> dict:
        message = train_message(config, server_round, **{client_handlers.RUN_NAME_KEY: "run"})
        return dict(client_handlers.handle_train(message, self.context)
                    .content.metric_records["metrics"])

    def evaluate(self, config, server_round: int) -> dict:
        message = train_message(config, server_round, **{client_handlers.RUN_NAME_KEY: "run"})
        return dict(client_handlers.handle_evaluate(message, self.context)
                    .content.metric_records["metrics"])


def test_two_crashes_never_restore_an_older_accountant(tmp_path) -> None:
    """Rounds 1-4, crash, resume from the checkpoint of round 2 (round 3 again), crash again,
    resume from round 2 again: six rounds were trained, six must be accounted."""
    config, site = tiny_config(**DP), Site(tmp_path)
    per_round = site.train(config, 1)["dp-total-steps"]
    for server_round in (2, 3, 4):
        site.train(config, server_round)
    for _ in range(2):
        site.restart()
        last = site.train(config, 3)
    assert last["dp-total-steps"] == 6 * per_round


@pytest.mark.parametrize("stage", ["before-train", "in-training", "after-train",
                                   "after-evaluate"])
def test_a_kill_at_any_stage_loses_no_release(tmp_path, monkeypatch, stage) -> None:
    config, site = tiny_config(**DP), Site(tmp_path)
    released = [site.train(config, 1)["dp-total-steps"]]
    per_round = released[0]
    trained = 1
    if stage == "in-training":
        calls = {"n": 0}
        original = torch.optim.Adam.step

        def crash_after_one_step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("killed")
            return original(self, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(torch.optim.Adam, "step", crash_after_one_step)
            with pytest.raises(RuntimeError, match="killed"):
                site.train(tiny_config(**{**DP, "client.local-epochs": 2}), 2)
    elif stage in ("after-train", "after-evaluate"):
        site.train(config, 2)  # its reply may or may not have reached the server
        trained += 1
        if stage == "after-evaluate":
            site.evaluate(config, 2)
    site.restart()
    for server_round in (2, 3):
        released.append(site.train(config, server_round)["dp-total-steps"])
        trained += 1
    assert released == sorted(released)  # never goes back
    assert released[-1] >= trained * per_round


def client_level_config(tmp_path: Path):
    return load_config(None, ["data.num-clients=2", "privacy.client-level=true",
                              "privacy.client-clip-norm=1.0", "strategy.min-train-nodes=1",
                              "strategy.min-available-nodes=1", "strategy.min-evaluate-nodes=1",
                              f"output.runs-dir='{tmp_path}'"])


def test_client_level_releases_after_the_checkpoint_are_replayed(tmp_path) -> None:
    """Rounds 1-4 released a noised model each; the last checkpoint is round 3. The resumed
    server's accountant must hold all four releases before round 4 is released again."""
    config = client_level_config(tmp_path)
    global_shared = {"w": np.zeros(3, np.float32)}
    privacy = ServerPrivacy(config, tmp_path, ["w"])
    update = {"w": np.full(3, 0.1, np.float32)}
    for server_round in range(1, 5):
        privacy.aggregate(server_round, [reply(0, update, 1)], global_shared, 1, 2)
    assert privacy.client_level.releases == 4
    resumed = ServerPrivacy(config, tmp_path, ["w"])
    resumed.resume([], last_round=3)
    assert resumed.client_level.releases == 4
    before = resumed.client_level.epsilon()
    resumed.aggregate(4, [reply(0, update, 1)], global_shared, 1, 2)
    assert resumed.client_level.releases == 5 and resumed.client_level.epsilon() > before
    from fedmirasol.privacy.report import run_summary

    assert run_summary(tmp_path)["client-level"]["epsilon"] == resumed.client_level.epsilon()


def test_client_level_run_records_keep_only_aggregates_by_default(tmp_path) -> None:
    record = {"round": 1, "sampled": [0, 1, 2], "participants": [0, 2], "train_loss": 1.0,
              "rejected": [{"node-id": 7, "partition-id": 1, "reason": "late"}],
              "clients": {"0": {"train_loss": 0.5}, "2": {"train_loss": 1.5}}}
    config = client_level_config(tmp_path)
    kept = ServerPrivacy(config, tmp_path, ["w"]).recorded(dict(record))
    assert kept == {"round": 1, "sampled": 3, "participants": 2, "train_loss": 1.0,
                    "rejected": [{"reason": "late"}]}
    from fedmirasol.config import with_values

    debugging = with_values(config, {"privacy.keep-client-rows": True})
    assert ServerPrivacy(debugging, tmp_path, ["w"]).recorded(dict(record)) == record
