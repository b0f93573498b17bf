"""LEAF data in federated runs: the Synthetic(alpha, beta) generator, FedAvg learning on it and on
FEMNIST-format handwriting, and DP-SGD + secure aggregation + FedBN + FedPer on LEAF data
unchanged (the real ClientApp and server loop, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.cli import main as cli_main
from fedmirasol.config import load_config
from fedmirasol.data.leaf import LeafFederation
from fedmirasol.data.leaf.synthetic import SyntheticSpec, generate, write_synthetic
from fedmirasol.engines.apps import build_client_app
from fedmirasol.runs import run_dir as rundir
from fedmirasol.secagg.identity import provision
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.leaf_digits import write_digits_femnist
from fedmirasol.testing.local_grid import LocalGrid
from fedmirasol.task import data as task_data
from fedmirasol.task.model import model_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMIRASOL_CACHE", str(tmp_path / "cache"))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def run_in_process(tmp_path: Path, clients: int, settings: list[str], secagg: bool = False
                   ) -> tuple[Path, list[dict]]:
    config = load_config(None, [f"data.num-clients={clients}", f"output.runs-dir='{tmp_path}'",
                                "output.plots=false", "client.threads=1", *settings])
    app = build_client_app(identities=provision(clients) if secagg else None)
    grid = LocalGrid(app, {100 + i: {"partition-id": i, "num-partitions": clients}
                           for i in range(clients)})
    run_dir = rundir.create(config.output.runs_dir, config.name)
    rundir.write_config(run_dir, config)
    FederatedRun(grid, config, run_dir).run()
    return run_dir, rundir.read_metrics(run_dir)


def test_synthetic_alpha_beta_follows_the_papers_procedure(tmp_path: Path) -> None:
    spec = SyntheticSpec(alpha=1.0, beta=1.0, users=6, dim=12, classes=5, seed=3)
    users = generate(spec)
    assert len(users) == 6
    for x, y in users:
        assert x.shape[1] == 12 and len(y) == len(x) >= 50 and y.max() < 5
        # labels are the argmax of a per-user linear model: each user is linearly separable
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(C=1e4, max_iter=5000).fit(x, y) if len(set(y)) > 1 else None
        assert fitted is None or fitted.score(x, y) > 0.97
    # input means differ across users with beta = 1, not with iid
    spread = np.std([x.mean() for x, _ in users])
    iid = np.std([x.mean() for x, _ in generate(SyntheticSpec(1.0, 1.0, users=6, dim=12,
                                                              classes=5, iid=True, seed=3))])
    assert spread > 3 * iid
    # same seed, same data
    again = generate(spec)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(users, again))


def test_leaf_synthetic_command_writes_leaf_json_with_each_users_split(tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "syn"
    args = ["data", "leaf-synthetic", "--alpha", "0.5", "--beta", "0.5", "--users", "5",
            "--out", str(out)]
    assert cli_main(args) == 0
    train = json.loads(next((out / "train").glob("*.json")).read_text())
    test = json.loads(next((out / "test").glob("*.json")).read_text())
    assert train["users"] == test["users"] == [f"f_{k:05d}" for k in range(5)]
    for user, n_train, n_test in zip(train["users"], train["num_samples"], test["num_samples"]):
        assert n_train == int(0.9 * (n_train + n_test)) and len(train["user_data"][user]["x"][0]) == 60
    assert cli_main(args) == 2  # never overwrites without --force
    assert "exists; pass --force" in capsys.readouterr().err
    leaf = LeafFederation(out)
    assert leaf.task.name == "synthetic" and len(leaf.users) == 5


@pytest.mark.parametrize("name", ["leaf-synthetic", "leaf-femnist", "leaf-shakespeare"])
def test_the_leaf_configs_validate(name: str) -> None:
    config = load_config(ROOT / "simulations" / f"{name}.toml")
    assert config.name == name and config.data.source == "leaf"
    assert config.client.optimizer == "sgd" and config.client.batch_size == 10  # LEAF's


def test_the_synthetic_config_takes_the_generated_data(tmp_path: Path) -> None:
    write_synthetic(SyntheticSpec(alpha=1.0, beta=1.0), tmp_path / "syn")
    config = load_config(ROOT / "simulations" / "leaf-synthetic.toml",
                         [f"data.leaf-path='{tmp_path / 'syn'}'"])
    assert len(task_data.specs(config)) == 30
    model = model_config(config)
    assert (model.leaf_input_dim, model.num_classes) == (60, 10)
    assert int(config.data.num_clients * config.strategy.fraction_train) == 10  # per round


def test_fedavg_on_synthetic_data_learns_and_lists_the_users(tmp_path: Path) -> None:
    write_synthetic(SyntheticSpec(alpha=0.0, beta=0.0, users=8, seed=1), tmp_path / "syn")
    run_dir, metrics = run_in_process(tmp_path, 8, [
        "num-rounds=4", "data.source='leaf'", f"data.leaf-path='{tmp_path / 'syn'}'",
        "model.name='leaf-logreg'", "client.local-epochs=2", "client.batch-size=10",
        "client.optimizer='sgd'", "client.lr=0.05", "client.momentum=0.0",
        "strategy.fraction-train=0.5"])
    accuracy = [r["centralized_accuracy"] for r in metrics]
    assert accuracy[-1] > 0.5 > accuracy[0]  # 10 classes: chance is about 0.1
    assert metrics[-1]["federated_accuracy"] == pytest.approx(accuracy[-1])  # LEAF's metric
    partitions = json.loads((run_dir / "partitions.json").read_text())
    assert [p["leaf-user"] for p in partitions] == [f"f_{k:05d}" for k in range(8)]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final_centralized_accuracy"] == accuracy[-1]


def test_dp_secure_aggregation_fedbn_and_fedper_run_on_leaf_data_unchanged(tmp_path: Path) -> None:
    write_synthetic(SyntheticSpec(alpha=0.5, beta=0.5, users=3, dim=10, seed=2), tmp_path / "syn")
    run_dir, metrics = run_in_process(tmp_path, 3, [
        "num-rounds=2", "data.source='leaf'", f"data.leaf-path='{tmp_path / 'syn'}'",
        "model.name='leaf-logreg'", "model.input-norm=true", "strategy.name='fedbn'",
        "personalization.method='fedper'", "client.local-epochs=1", "client.batch-size=16",
        "privacy.enabled=true", "privacy.noise-multiplier=1.0", "privacy.max-grad-norm=1.0",
        "secagg.enabled=true", "secagg.min-contributors=2", "secagg.reconstruction-fraction=0.6",
        "strategy.min-train-nodes=3", "strategy.min-available-nodes=3"], secagg=True)
    assert [len(r["participants"]) for r in metrics[1:]] == [3, 3]
    assert all(not r["rejected"] for r in metrics[1:])
    ledger = [json.loads(line) for line in (run_dir / "privacy-ledger.jsonl").read_text().splitlines()]
    assert {row["partition-id"] for row in ledger} == {0, 1, 2} and all(row["epsilon"] > 0 for row in ledger)
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["local_parameters"]) == {"input_norm.weight", "input_norm.bias",
                                               "classifier.weight", "classifier.bias"}


@pytest.mark.slow
def test_leafs_cnn_learns_femnist_format_handwriting(tmp_path: Path) -> None:
    write_digits_femnist(tmp_path / "digits", writers=2, limit=700)
    _, metrics = run_in_process(tmp_path, 2, [
        "num-rounds=2", "data.source='leaf'", f"data.leaf-path='{tmp_path / 'digits'}'",
        "model.name='leaf-cnn'", "client.local-epochs=1", "client.batch-size=10",
        "client.lr=0.001", "strategy.fraction-evaluate=0.0"])
    assert metrics[0]["centralized_accuracy"] < 0.2  # 62 classes, 10 used: chance 0.1
    assert metrics[-1]["centralized_accuracy"] > 0.4  # benchmarks/README.md: the full run
