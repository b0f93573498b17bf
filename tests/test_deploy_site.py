"""`fedmirasol certs`: a CA, a SuperLink certificate for loopback, SuperNode keys Flower reads."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmirasol.cli import main
from fedmirasol.deploy.certs import make_credentials
from fedmirasol.client.site import apply_site, site_overrides, state_dir


def test_certs_cli_writes_a_verifiable_chain_and_node_keys(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--nodes", "2", "--host", "link.example"]) == 0
    assert "node-1.pub" in capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "link.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i in range(2):  # the formats flower-supernode and `flwr supernode register` read
        private = load_ssh_private_key((tmp_path / f"node-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"node-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert public.public_numbers() == private.public_key().public_numbers()
        assert (tmp_path / f"node-{i}").stat().st_mode & 0o077 == 0
    assert not (tmp_path / "node-2").exists()


def test_node_keys_differ(tmp_path):
    creds = make_credentials(tmp_path, nodes=2)
    assert creds.node_keys[0][1].read_bytes() != creds.node_keys[1][1].read_bytes()


def test_site_settings_from_node_config(tmp_path):
    from fedmirasol.config import load_config

    config = load_config(overrides=["data.num-clients=3"])
    node = {"partition-id": 1, "num-partitions": 3, "state-dir": str(tmp_path),
            "data.manifest": "/data/site1.csv", "client.device": "cpu",
            "model.num-frames": 8, "client.batch-size": 4}
    site = apply_site(config, node)
    assert site.data.source == "site" and site.data.manifest == "/data/site1.csv"
    assert site.model.mirasol.num_frames == 8 and site.client.batch_size == 4
    assert apply_site(config, {"partition-id": 0}) == config
    assert state_dir(node, "run-a") == str(tmp_path / "run-a")
    assert state_dir({"partition-id": 0}, "run-a") == ""


def test_site_settings_refuse_unknown_keys_and_other_architectures():
    import pytest

    from fedmirasol.config import load_config

    config = load_config()
    with pytest.raises(KeyError, match="strategy.name"):
        site_overrides({"strategy.name": "fedprox"})
    with pytest.raises(ValueError, match="architecture"):
        apply_site(config, {"model.width": 128})


def test_node_state_dir_takes_precedence_and_a_restarted_node_restores_it(tmp_path):
    """A deployed node mirrors its state under its own state-dir/<run-name>, not the server's
    client-state-dir, and a fresh process (empty context.state) picks it up next round."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.client import handlers as client_handlers
    from test_federated_messages import tiny_config, train_message

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = tiny_config(**{"strategy.name": "fedbn"})
    node = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "site")}
    extra = {client_handlers.STATE_DIR_KEY: str(tmp_path / "server-side"),
             client_handlers.RUN_NAME_KEY: "run-a"}

    def context() -> Context:
        return Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                       node_config=node)

    from fedmirasol.client import state as client_state

    first = context()
    client_handlers.handle_train(train_message(config, 1, **extra), first)
    mirror = tmp_path / "site" / "run-a" / "client-00000-round-00001.safetensors"
    assert mirror.is_file()
    assert not (tmp_path / "server-side").exists()
    assert not first.state.array_records  # its home is the disk: nothing kept in memory
    saved = client_state.read_mirror(mirror)["local-params"]
    assert saved
    restarted = context()  # a new SuperNode process: nothing in memory
    round_2 = train_message(config, 2, **extra)
    client_handlers.restore_state(restarted, round_2.content.config_records["config"], 0, 2)
    kept = restarted.state.array_records["local-params"]
    assert {k: v.numpy().tolist() for k, v in kept.items()} == \
        {k: v.tolist() for k, v in saved.items()}
    client_handlers.handle_evaluate(train_message(config, 1, **extra), context())


def test_a_site_trains_on_its_own_whole_manifest(tmp_path):
    """data.manifest in the node config: the site reads its manifest whole (train + val), the
    server's partition summary stays empty (it never sees site data)."""
    from fedmirasol.data.media.synth import write_synthetic_media
    from fedmirasol.task import data as client_data
    from fedmirasol.config import load_config

    config = load_config(overrides=["data.num-clients=3", "data.source=\"site\"",
                                    "model.num-frames=8", "data.val-fraction=0.25"])
    manifest = write_synthetic_media(tmp_path / "site1", 8, config.model.mirasol)
    site = apply_site(config, {"partition-id": 1, "data.manifest": str(manifest)})
    data = client_data.client_data(site, 1)
    assert len(data.train) + len(data.val) == 8 and len(data.val) == 2
    assert data.train[0]["video"].shape[0] == 8  # frames, as the site's model config says
    assert client_data.partition_summary(config) == []
