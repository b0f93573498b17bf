"""`fedmirasol he-keys` (a CKKS key pair for a federation) and `fedmirasol he-decrypt` (a site
decrypts a homomorphic-encryption run's final model)."""

from __future__ import annotations

import argparse
from pathlib import Path

KEYS = ("Write he-site.ckks (the CKKS parameters, a key id and the federation's secret key: every "
        "site gets a copy, mode 0600) and he-server.ckks (parameters and key id only: the "
        "server's he.public-context). Sites share the one secret key: a site that colludes "
        "with the server can read any client's update. Existing files are never overwritten "
        "without --force.")
DECRYPT = ("Decrypt the encrypted global state in RUN_DIR's last checkpoint with a site's secret "
           "context, run the server's step on it as a client would, and write "
           "RUN_DIR/final_model.pt.")
PARAMETERS = (("--poly-modulus-degree", int, "N", "ring degree: N values a ciphertext (default "
               "8192, he.poly-modulus-degree's)"),
              ("--coeff-bits", str, "BITS", "coefficient-modulus prime sizes, comma-separated "
               "(default 60, he.coeff-bits')"),
              ("--scale-bits", int, "BITS", "encoding scale 2^BITS (default 40, he.scale-bits')"))


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("he-keys", description=KEYS, help="make the CKKS contexts of "
                                 "a homomorphic-encryption federation")
    keys.add_argument("--out", type=Path, required=True, metavar="DIR")
    for flag, kind, metavar, text in PARAMETERS:
        keys.add_argument(flag, type=kind, metavar=metavar, help=text)
    keys.add_argument("--force", action="store_true",
                      help="replace existing files (sites with the old key must be set up again)")
    keys.set_defaults(func=make_keys)

    decrypt = subparsers.add_parser("he-decrypt", description=DECRYPT, help="decrypt a "
                                    "homomorphic-encryption run's final model (a site)")
    decrypt.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    decrypt.add_argument("--secret-context", type=Path, metavar="FILE",
                         help="the site's he-site.ckks (default: RUN_DIR/he-keys/he-site.ckks, "
                         "which a simulation makes)")
    decrypt.set_defaults(func=decrypt_final)


def make_keys(args: argparse.Namespace) -> int:
    from fedmirasol.config.he import HEConfig
    from fedmirasol.he.keyfiles import write_key_pair
    from fedmirasol.he.params import CkksParameters

    given = {"poly_modulus_degree": args.poly_modulus_degree, "coeff_bits": args.coeff_bits,
             "scale_bits": args.scale_bits}
    settings = HEConfig(**{key: value for key, value in given.items() if value is not None})
    params = CkksParameters.from_config(settings)
    site, server = write_key_pair(args.out, params, force=args.force)
    print(f"CKKS parameters: {params.describe()}")
    print(f"site context:    {site}  (every site: node config he-secret-context; keep secret)")
    print(f"server context:  {server}  (the server: run config he.public-context)")
    return 0


def decrypt_final(args: argparse.Namespace) -> int:
    from fedmirasol.engines.he_final import write_final_model
    from fedmirasol.he.keyfiles import SIMULATION_KEYS_DIR, SITE_FILE, load_site

    secret = args.secret_context or args.run_dir / SIMULATION_KEYS_DIR / SITE_FILE
    path = write_final_model(args.run_dir, load_site(secret))
    print(f"final model: {path}")
    return 0
