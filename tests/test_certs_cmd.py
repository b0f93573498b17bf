"""`fedmirasol certs`: never overwrites without --force; private keys are 0600 from creation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedmirasol.cli import main
from fedmirasol.deploy import certs
from fedmirasol.deploy.certs import CredentialsExistError, credential_paths, make_credentials

PRIVATE = ("ca.key", "server.key", "node-0", "node-1")
PUBLIC = ("ca.crt", "server.crt", "node-0.pub", "node-1.pub", "registry.pub")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_refuses_to_overwrite_without_force_and_names_the_files(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--nodes", "2"]) == 0
    before = _snapshot(tmp_path)
    assert set(before) == set(PRIVATE + PUBLIC)
    capsys.readouterr()

    assert main(["certs", "--out", str(tmp_path), "--nodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err
    for name in PRIVATE + PUBLIC:
        assert str(tmp_path / name) in err
    assert _snapshot(tmp_path) == before  # byte for byte


def test_one_existing_file_blocks_everything_and_is_named(tmp_path):
    """Even a lone node key (a registered site's) stops the run before anything is written."""
    (tmp_path / "node-1.pub").write_bytes(b"registered\n")
    with pytest.raises(CredentialsExistError) as info:
        make_credentials(tmp_path, nodes=2)
    assert info.value.paths == [tmp_path / "node-1.pub"]
    assert "node-1.pub" in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["node-1.pub"]


def test_a_symlink_counts_as_existing(tmp_path):
    (tmp_path / "ca.key").symlink_to(tmp_path / "elsewhere")  # dangling: never followed
    with pytest.raises(CredentialsExistError, match="ca.key"):
        make_credentials(tmp_path, nodes=0)
    assert not (tmp_path / "elsewhere").exists()


def test_credential_paths_lists_every_file_written(tmp_path):
    assert [p.name for p in credential_paths(tmp_path, 1)] == [
        "ca.crt", "ca.key", "server.crt", "server.key", "node-0", "node-0.pub", "registry.pub"]


def test_registry_lists_every_node_key_as_an_identity(tmp_path):
    from fedmirasol.secagg.identity import load_identity, read_registry

    creds = make_credentials(tmp_path, nodes=3)
    registry = read_registry(creds.registry)
    assert len(registry) == 3
    for private, _ in creds.node_keys:  # each SuperNode key is a registered identity
        identity = load_identity(private, creds.registry)
        assert identity.public in registry


def test_force_overwrites_everything(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--nodes", "2"]) == 0
    before = _snapshot(tmp_path)
    for name in PRIVATE:  # a loosened mode on an old key is not inherited by the new one
        os.chmod(tmp_path / name, 0o644)
    assert main(["certs", "--out", str(tmp_path), "--nodes", "2", "--force"]) == 0
    after = _snapshot(tmp_path)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)
    for name in PRIVATE:
        assert _mode(tmp_path / name) == 0o600


def test_private_keys_are_created_0600_and_never_chmodded(tmp_path, monkeypatch):
    """With umask 0 a key written then chmod-ed would exist world-readable for a moment; the
    keys must come out of os.open with 0600 and no chmod must be called at all."""
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        # the mode of the file the moment it exists, before a byte is written
        opened.append((Path(path).name, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    def no_chmod(*args, **kwargs):
        raise AssertionError(f"chmod called: {args}")

    monkeypatch.setattr(certs.os, "open", recording_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        make_credentials(tmp_path, nodes=2)
    finally:
        os.umask(old_umask)
    modes = dict(opened)
    assert set(modes) == set(PRIVATE + PUBLIC)
    for name in PRIVATE:
        assert modes[name] == 0o600, name
        assert _mode(tmp_path / name) == 0o600, name
    for name in PUBLIC:  # certificates and public keys stay readable
        assert modes[name] == 0o644, name
        assert _mode(tmp_path / name) & 0o044 == 0o044, name


def test_public_files_readable_under_the_usual_umask(tmp_path):
    old_umask = os.umask(0o022)
    try:
        make_credentials(tmp_path, nodes=1)
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "ca.crt") == 0o644
    assert _mode(tmp_path / "node-0.pub") == 0o644
    assert _mode(tmp_path / "node-0") == 0o600
