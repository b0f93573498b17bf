"""The site owns its privacy: its node config pins what any run on its data must give, its
budget lives per dataset across runs, and nothing the server names leaves its state folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from fedmirasol.client.site import state_dir
from fedmirasol.errors import ConfigError
from test_federated_messages import tiny_config, train_message

DP = {"privacy.enabled": "true", "privacy.noise-multiplier": 1.0, "client.local-epochs": 1}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def site(tmp_path: Path, **policy) -> dict:
    return {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "site"),
            **policy}


def context(node: dict) -> Context:
    return Context(run_id=1, node_id=5, state=RecordDict(), run_config={}, node_config=node)


def train(config, node: dict, run_name: str = "run-a", server_round: int = 1):
    message = train_message(config, server_round, **{client_handlers.RUN_NAME_KEY: run_name})
    return client_handlers.handle_train(message, context(node))


def metrics(reply) -> dict:
    return dict(reply.content.metric_records["metrics"])


def test_a_site_with_a_budget_refuses_a_run_without_dp(tmp_path) -> None:
    node = site(tmp_path, **{"privacy.lifetime-epsilon": 40.0})
    with pytest.raises(ConfigError, match="privacy.enabled"):
        train(tiny_config(), node)
    assert not list((tmp_path / "site").rglob("*.safetensors"))  # nothing trained


def test_a_site_refuses_a_delta_above_its_own(tmp_path) -> None:
    node = site(tmp_path, **{"privacy.lifetime-epsilon": 40.0})
    with pytest.raises(ConfigError, match="privacy.delta"):
        train(tiny_config(**DP, **{"privacy.delta": 0.9}), node)


def test_a_site_refuses_less_noise_or_another_accountant_or_more_epsilon(tmp_path) -> None:
    node = site(tmp_path, **{"privacy.min-noise-multiplier": 1.5})
    with pytest.raises(ConfigError, match="privacy.noise-multiplier"):
        train(tiny_config(**DP), node)
    node = site(tmp_path, **{"privacy.accountant": "prv"})
    with pytest.raises(ConfigError, match="privacy.accountant"):
        train(tiny_config(**DP), node)
    node = site(tmp_path, **{"privacy.max-epsilon": 2.0})
    with pytest.raises(ConfigError, match="privacy.target-epsilon"):
        train(tiny_config(**{**DP, "privacy.target-epsilon": 5.0}), node)
    node = site(tmp_path, **{"privacy.required": True})
    with pytest.raises(ConfigError, match="privacy.required"):
        train(tiny_config(), node)


def test_the_lifetime_budget_holds_across_runs_of_the_same_dataset(tmp_path) -> None:
    config = tiny_config(**DP)
    first = metrics(train(config, site(tmp_path), "run-a"))
    spent = first["dp-lifetime-epsilon"]
    node = site(tmp_path, **{"privacy.lifetime-epsilon": spent * 1.5,
                             "privacy.dataset-id": "default"})
    refused = train(config, node, "run-b")  # a new run name: the budget is not fresh
    assert "arrays" not in refused.content.array_records
    assert metrics(refused)["dp-budget-exhausted"] == 1
    other = site(tmp_path, **{"privacy.lifetime-epsilon": spent * 1.5,
                              "privacy.dataset-id": "other-dataset"})
    assert "arrays" in train(config, other, "run-c").content.array_records


def test_the_run_name_cannot_leave_the_state_folder(tmp_path) -> None:
    root = tmp_path / "site"
    for name in ("../../x", "..", "/etc/x", "a/../../b"):
        try:
            folder = Path(state_dir({"state-dir": str(root)}, name)).resolve()
        except ConfigError:
            continue
        assert folder.is_relative_to(root.resolve()) and folder != root.resolve()


def test_the_old_per_run_node_budget_key_is_refused_by_name() -> None:
    from fedmirasol.client.site import site_overrides

    with pytest.raises(KeyError, match="privacy.lifetime-epsilon"):
        site_overrides({"privacy.budget-epsilon": 4.0})
