"""`fedmirasol certs --out DIR`: test TLS certificates and SuperNode keys for a deployment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs", help="make a test CA, a SuperLink certificate and SuperNode key pairs",
        description="Write a test certificate authority (ca.crt), a SuperLink TLS certificate "
        "(server.crt/server.key; SANs localhost, 127.0.0.1, ::1 and --host) and SuperNode "
        "authentication key pairs (node-<i>, node-<i>.pub; OpenSSH EC P-384) for trying a "
        "deployment. Sites in production use their own PKI. Existing files are never "
        "overwritten without --force (a new CA or node key breaks sites already set up); "
        "private keys are created with mode 0600.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--nodes", type=int, default=3, help="SuperNode key pairs (default 3)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                        help="another name or IP address of the SuperLink (repeatable)")
    parser.add_argument("--days", type=int, default=365, help="validity (default 365 days)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing files in DIR (sites set up with the old CA or "
                        "node keys must be set up again)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.deploy.certs import CredentialsExistError, make_credentials

    try:
        creds = make_credentials(args.out, nodes=args.nodes, hosts=args.host, days=args.days,
                                 force=args.force)
    except CredentialsExistError as error:
        print(f"fedmirasol certs: error: {error}", file=sys.stderr)
        return 2
    print(f"CA certificate:      {creds.ca_cert}")
    print(f"SuperLink cert/key:  {creds.server_cert} {creds.server_key}")
    for private, public in creds.node_keys:
        print(f"SuperNode key pair:  {private} {public}")
    print(f"Registry:            {creds.registry} (node config secagg-registry; secagg-key = "
          "the node's key)")
    return 0
