"""Homomorphic encryption inside the app: the real ClientApp and FederatedRun over an in-process
Grid, tiny model, three clients. A round of FedBN under HE moves the model where the plain
round does (within the CKKS bound), with the normalization layers never encrypted or sent; a
client with the wrong key fails by name and the round goes on without it; DP-SGD's figures
reach the ledger; the commands make the keys and decrypt the final model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.cli import main
from fedmirasol.client.he import HEOpener
from fedmirasol.config import load_config
from fedmirasol.engines.apps import build_client_app
from fedmirasol.errors import ConfigError
from fedmirasol.he.keyfiles import load_site, write_key_pair
from fedmirasol.he.wire import HEADER_KEY, is_encrypted, read_header
from fedmirasol.privacy import ledger as privacy_ledger
from fedmirasol.runs import run_dir as rundir
from fedmirasol.server.aggregators.he import HEMean
from fedmirasol.server.aggregators.he_step import ServerStepOnClients
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.local_grid import LocalGrid

NODES = [11, 12, 13]


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_key_pair(tmp_path_factory.mktemp("he-keys"), _params())


def _params():  # noqa: ANN202
    from fedmirasol.he.params import CkksParameters

    return CkksParameters(poly_modulus_degree=4096)


def config(rounds: int, keys: tuple[Path, Path] | None = None, **overrides: Any):
    base = {"num-rounds": rounds, "data.num-clients": 3, "data.clips-per-client": 6,
            "data.test-clips": 4, "model.num-frames": 8, "client.batch-size": 4,
            "client.local-epochs": 1, "client.threads": 1, "strategy.min-train-nodes": 2,
            "strategy.min-available-nodes": 2, "strategy.round-timeout": 60.0}
    if keys is not None:
        base |= {"he.enabled": True, "he.public-context": str(keys[1]),
                 "server.evaluate-every": 0}
    base |= overrides
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])


def run(cfg, run_dir: Path, secret: Path | None = None,
        node_secrets: dict[int, Path] | None = None, seen: list[Message] | None = None
        ) -> FederatedRun:
    nodes = {node: {"partition-id": i, "num-partitions": 3} for i, node in enumerate(NODES)}
    for node, path in (node_secrets or {}).items():
        nodes[node]["he-secret-context"] = str(path)
    grid = LocalGrid(build_client_app(he_secret=str(secret) if secret else None), nodes,
                     observe=(seen.append if seen is not None else None))
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    federated = FederatedRun(grid, cfg, run_dir)
    federated.run()
    return federated


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_round_under_he_moves_the_model_as_the_plain_round_and_fedbn_stays_local(
        tmp_path: Path, keys) -> None:
    plain = run(config(1, **{"strategy.name": "fedbn"}), tmp_path / "plain")
    seen: list[Message] = []
    he = run(config(1, keys, **{"strategy.name": "fedbn"}), tmp_path / "he", keys[0], seen=seen)
    record = metrics(tmp_path / "he")[-1]
    assert record["participants"] == [0, 1, 2] and record["aggregate_kept_previous"] is None
    assert record["train_loss"] == pytest.approx(metrics(tmp_path / "plain")[-1]["train_loss"])
    # the server holds ciphertexts only
    assert is_encrypted(he.global_shared) and set(he.global_shared) >= {HEADER_KEY}
    assert all(v.dtype == np.uint8 for v in he.global_shared.values())
    # what the clients sent: ciphertexts of the shared parameters only (no normalization)
    train_replies = [m for m in seen if m.metadata.message_type == "train"]
    assert len(train_replies) == 3
    for reply in train_replies:
        arrays = reply.content.array_records["arrays"]
        assert all(key == HEADER_KEY or key.startswith("he.batch.") for key in arrays)
        names = [n for s in read_header(arrays).layout.segments for n in s.names]
        assert names == list(plain.global_shared)
        assert not any("norm" in name for name in names)
    assert not any("norm" in name for name in plain.global_shared)
    # decrypted, the model equals the plain round's within the CKKS bound (and float32)
    model, _ = HEOpener(ServerStepOnClients()).open_state(load_site(keys[0]), he.config,
                                                           he.global_shared)
    bound = record["he_error_bound"]
    assert 0 < bound < 1e-7
    assert model.keys() == plain.global_shared.keys()
    for name, value in plain.global_shared.items():
        slack = bound + 2 * np.spacing(np.abs(value))
        assert (np.abs(model[name] - value) <= slack).all(), name
    assert record["bytes_up"] < 2.2 * metrics(tmp_path / "plain")[-1]["bytes_up"]


def test_a_client_with_the_wrong_key_fails_by_name(tmp_path: Path, keys) -> None:
    other = write_key_pair(tmp_path / "other", _params())
    run(config(2, keys), tmp_path / "run", keys[0], node_secrets={13: other[0]})
    first, second = metrics(tmp_path / "run")  # no round 0: the server evaluates nothing
    for record in (first, second):
        assert record["participants"] == [0, 1] and record["aggregate_kept_previous"] is None
        [rejection] = record["rejected"]
        assert rejection["partition-id"] == 2 and "WrongContext" in rejection["reason"]
    assert "encrypted under key id" in first["rejected"][0]["reason"]  # its reply, at the server
    assert "the server's encrypted state" in second["rejected"][0]["reason"]  # at the client


def test_dp_sgd_under_he_reaches_the_ledger(tmp_path: Path, keys) -> None:
    run(config(1, keys, **{"privacy.enabled": True, "privacy.noise-multiplier": 1.0}),
        tmp_path / "run", keys[0])
    record = metrics(tmp_path / "run")[-1]
    assert record["participants"] == [0, 1, 2]
    ledger = [json.loads(line) for line in
              privacy_ledger.ledger_path(tmp_path / "run").read_text().splitlines()]
    assert sorted(r["partition-id"] for r in ledger if r["round"] == 1) == [0, 1, 2]


def test_client_level_dp_under_he_is_accounted(tmp_path: Path, keys) -> None:
    run(config(1, keys, **{"privacy.client-level": True, "he.min-contributors": 2}),
        tmp_path / "run", keys[0])
    record = metrics(tmp_path / "run")[-1]
    # under client-level DP the run directory keeps only aggregates: participants are counted
    assert record["participants"] == 3 and record["aggregate_kept_previous"] is None
    [release] = [json.loads(line) for line in
                 privacy_ledger.ledger_path(tmp_path / "run").read_text().splitlines()]
    assert release["kind"] == "client-level" and release["round"] == 1
    assert release["sampled-clients"] == 3 and release["epsilon"] > 0


def test_he_keys_and_he_decrypt_commands(tmp_path: Path, keys, capsys) -> None:
    assert main(["he-keys", "--out", str(tmp_path / "k"), "--poly-modulus-degree", "4096"]) == 0
    out = capsys.readouterr().out
    assert "192-bit security" in out and "he-site.ckks" in out and "he-server.ckks" in out
    assert (tmp_path / "k" / "he-site.ckks").stat().st_mode & 0o777 == 0o600
    assert main(["he-keys", "--out", str(tmp_path / "k")]) == 2  # never overwritten
    assert "refusing to overwrite" in capsys.readouterr().err

    he = run(config(1, keys), tmp_path / "run", keys[0])
    assert not (tmp_path / "run" / rundir.FINAL_MODEL_FILE).exists()  # the server cannot
    assert main(["he-decrypt", str(tmp_path / "run"), "--secret-context", str(keys[0])]) == 0
    final = torch.load(tmp_path / "run" / rundir.FINAL_MODEL_FILE, weights_only=True)
    model, _ = HEOpener(ServerStepOnClients()).open_state(load_site(keys[0]), he.config,
                                                           he.global_shared)
    for name, value in model.items():
        np.testing.assert_array_equal(final["state_dict"][name].numpy(), value)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["shared_parameters"] == sum(v.size for v in model.values())


def test_the_server_side_aggregator_holds_no_secret_key(keys) -> None:
    from fedmirasol.he.ckks import ServerContext
    from fedmirasol.server.aggregators import choose_aggregator

    aggregator = choose_aggregator(config(1, keys), {})
    assert type(aggregator) is HEMean and type(aggregator.context) is ServerContext
    held = [vars(aggregator), vars(aggregator.context)]
    assert not any(type(v).__name__ in ("SecretKey", "Decryptor", "Encryptor")
                   for attrs in held for v in attrs.values())
    with pytest.raises(ConfigError, match="holds a site's secret key"):
        choose_aggregator(config(1, (keys[0], keys[0])), {})


@pytest.mark.parametrize("overrides, message", [
    ({"secagg.enabled": True}, "choose one way"),
    ({"strategy.name": "median"}, "needs strategy.name in"),
    ({"privacy.client-level": True, "strategy.name": "fedadam"}, "privacy.client-level"),
    ({"server.evaluate-every": 1}, "needs server.evaluate-every = 0"),
    ({"he.coeff-bits": "60,x"}, "he.coeff-bits"),
    ({"he.scale-bits": 55}, "he.scale-bits"),
])
def test_config_rules(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(1, (Path("s"), Path("p")), **overrides)
