"""`fedmirasol clientapp-server`: a site's long-running ClientApp executor for a SuperNode
started with `--isolation process` (imports once per site, a forked process per message)."""

from __future__ import annotations

import argparse
import logging


DESCRIPTION = ("Serve the ClientApp tasks of a SuperNode started with `flower-supernode "
               "--isolation process`: torch, Flower and fedmirasol are imported once, and each "
               "message runs Flower's flwr-clientapp in a process forked from this one. Runs "
               "until stopped.")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("clientapp-server", description=DESCRIPTION, help=(
        "run a SuperNode's ClientApps from one warm process (--isolation process)"))
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                        metavar="HOST:PORT",
                        help="the SuperNode's Runtime API (its --host/--port; default "
                        "127.0.0.1:9094)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--insecure", action="store_true",
                           help="plain HTTP to the Runtime API (same machine only)")
    transport.add_argument("--root-certificates", metavar="CA_PEM",
                           help="CA of the Runtime API's TLS certificate (the SuperNode's "
                           "--ssl-* files)")
    parser.add_argument("--max-tasks", type=int, default=0, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmirasol.engines.warm_clientapp import serve
    from fedmirasol.errors import ConfigError

    if not args.insecure and not args.root_certificates:
        raise ConfigError("clientapp-server: give --root-certificates CA_PEM (the SuperNode's "
                          "Runtime API uses TLS) or --insecure (plain HTTP on this machine)")
    handler = logging.StreamHandler()  # Flower's own logger prints Flower's lines
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger = logging.getLogger("fedmirasol")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Flower's root handlers would print each line twice more
    print(f"serving the ClientApps of the SuperNode at {args.runtime_api_address}",
          flush=True)
    serve(args.runtime_api_address, insecure=args.insecure,
          root_certificates=args.root_certificates, max_tasks=args.max_tasks)
    return 0
