"""Test credentials for a deployment: a CA, a SuperLink TLS certificate, SuperNode key pairs.

Layout written by `make_credentials(out)`::

    ca.crt, ca.key            the test certificate authority (self-signed, P-384)
    server.crt, server.key    the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1,
                              ::1 and any extra hosts), signed by the CA
    node-<i>                  SuperNode i's private key, OpenSSH format (what
                              `flower-supernode --auth-supernode-private-key` reads)
    node-<i>.pub              its public key, OpenSSH format (what
                              `flwr supernode register` reads)

Flower's SuperNode authentication takes NIST elliptic-curve keys (P-384 here). These are test
credentials: a production site uses its own PKI and generates its node key on the device.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[tuple[Path, Path]] = field(default_factory=list)  # (private, public)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmirasol test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
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


def write_node_key(private_path: Path) -> tuple[Path, Path]:
    """A SuperNode key pair in OpenSSH format: (`private_path`, `private_path`.pub)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    public_path = private_path.with_name(private_path.name + ".pub")
    return _write(private_path, private, private=True), _write(public_path, public + b"\n")


def make_credentials(out: str | Path, nodes: int = 3, hosts: Sequence[str] = (),
                     days: int = 365) -> Credentials:
    """Write a CA, a SuperLink certificate and `nodes` SuperNode key pairs to `out`."""
    if nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {nodes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    ca_cert, ca_key = make_ca(days)
    server_cert, server_key = make_server_cert(ca_cert, ca_key, all_hosts, days)
    pem = serialization.Encoding.PEM
    creds = Credentials(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem)),
        server_cert=_write(out / "server.crt", server_cert.public_bytes(pem)),
        server_key=_write(out / "server.key", _pem_key(server_key), private=True),
    )
    _write(out / "ca.key", _pem_key(ca_key), private=True)
    creds.node_keys.extend(write_node_key(out / f"node-{i}") for i in range(nodes))
    return creds
