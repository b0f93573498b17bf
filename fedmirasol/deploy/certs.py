"""Test credentials for a deployment: a CA, a SuperLink TLS certificate, SuperNode key pairs.

Layout written by `make_credentials(out)`::

    ca.crt, ca.key            the test certificate authority (self-signed, P-384)
    server.crt, server.key    the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1,
                              ::1 and any extra hosts), signed by the CA
    node-<i>                  SuperNode i's private key, OpenSSH format (what
                              `flower-supernode --auth-supernode-private-key` reads)
    node-<i>.pub              its public key, OpenSSH format (what
                              `flwr supernode register` reads)
    registry.pub              every node's public key, one per line: the registry a site
                              accepts secure-aggregation peers from (node config
                              ``secagg-registry``; its own key is ``secagg-key`` = node-<i>)

Flower's SuperNode authentication takes NIST elliptic-curve keys (P-384 here). These are test
credentials: a production site uses its own PKI and generates its node key on the device.

Existing files are never overwritten unless `force=True` (a new CA invalidates every
certificate it signed and a new node key un-registers the site), and private keys are created
with mode 0600 (`os.open(..., 0o600)`), so they are never readable by others, not even briefly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmirasol.errors import ConfigError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[tuple[Path, Path]] = field(default_factory=list)  # (private, public)
    registry: Path | None = None  # every node's public key, one per line


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmirasol test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CredentialsExistError(FileExistsError):
    """Some of the files `make_credentials` would write exist already (and `force` is off)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        names = ", ".join(str(p) for p in self.paths)
        super().__init__(f"refusing to overwrite existing credentials: {names} (a new CA or "
                         "node key breaks the sites already set up with the old ones; "
                         "use --force to replace them)")


def _write(path: Path, data: bytes, private: bool = False, force: bool = False) -> Path:
    """Write `data` to a new file at `path`: mode 0600 from its creation for a private key,
    0644 (less the umask) otherwise. An existing file is an error unless `force`, which removes
    it first (so a replaced key never inherits the old file's mode and is never truncated in
    place while another process reads it)."""
    if force:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    # O_EXCL: fails on an existing path, a symlink included (never followed).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600 if private else 0o644)
    except FileExistsError:  # created since make_credentials checked
        raise CredentialsExistError([path]) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(CURVE())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("fedmirasol test CA")).issuer_name(_name("fedmirasol test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA384()))
    return cert, key


def make_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                     hosts: Sequence[str], days: int
                     ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for `hosts` (DNS names or IP addresses), signed by the CA."""
    key = ec.generate_private_key(CURVE())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return cert, key


def node_key_paths(private_path: Path) -> tuple[Path, Path]:
    """(private key, public key) paths of a SuperNode key pair."""
    return private_path, private_path.with_name(private_path.name + ".pub")


def write_node_key(private_path: Path, force: bool = False) -> tuple[Path, Path]:
    """A SuperNode key pair in OpenSSH format: (`private_path`, `private_path`.pub)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    private_path, public_path = node_key_paths(private_path)
    return (_write(private_path, private, private=True, force=force),
            _write(public_path, public + b"\n", force=force))


def credential_paths(out: str | Path, nodes: int = 3) -> list[Path]:
    """Every file `make_credentials(out, nodes)` writes."""
    out = Path(out)
    paths = [out / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")]
    for i in range(nodes):
        paths.extend(node_key_paths(out / f"node-{i}"))
    return paths + [out / "registry.pub"]


def make_credentials(out: str | Path, nodes: int = 3, hosts: Sequence[str] = (),
                     days: int = 365, force: bool = False) -> Credentials:
    """Write a CA, a SuperLink certificate and `nodes` SuperNode key pairs to `out`.

    Raises `CredentialsExistError` naming every file that exists already, before writing
    anything, unless `force` (which replaces them)."""
    if nodes < 0:
        raise ConfigError(f"--nodes must be >= 0, got {nodes}")
    out = Path(out)
    if not force:
        existing = [p for p in credential_paths(out, nodes) if os.path.lexists(p)]
        if existing:
            raise CredentialsExistError(existing)
    out.mkdir(parents=True, exist_ok=True)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    ca_cert, ca_key = make_ca(days)
    server_cert, server_key = make_server_cert(ca_cert, ca_key, all_hosts, days)
    pem = serialization.Encoding.PEM
    creds = Credentials(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem), force=force),
        server_cert=_write(out / "server.crt", server_cert.public_bytes(pem), force=force),
        server_key=_write(out / "server.key", _pem_key(server_key), private=True, force=force),
    )
    _write(out / "ca.key", _pem_key(ca_key), private=True, force=force)
    creds.node_keys.extend(write_node_key(out / f"node-{i}", force=force)
                           for i in range(nodes))
    lines = b"".join(public.read_bytes() for _, public in creds.node_keys)
    return dataclasses.replace(creds, registry=_write(out / "registry.pub", lines, force=force))
