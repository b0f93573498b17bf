"""A homomorphic-encryption run against the plain run of the same config, round by round.

Both runs start from the same model and seeds, so round 1's clients train identically and the
two global models differ only by the CKKS error (within `he_error_bound`, up to float32
rounding); from round 2 on the clients start from models that differ by that much, and local
training (Adam, several epochs) carries the difference on. For every round both runs
checkpointed, this decrypts the HE run's encrypted state (with the site file the simulation
made, `HE_RUN/he-keys/he-site.ckks`) and prints the largest difference between the two global
models, the round's error bound, and both runs' train loss and federated accuracy; then the
final test accuracies (plain: the server's centralized evaluation; HE: the decrypted final
model on the same test clips).

    fedmirasol simulate --set output.runs-dir=runs/eq                     # plain quickstart
    fedmirasol simulate --config simulations/he.toml --set output.runs-dir=runs/eq
    python benchmarks/he_equivalence.py runs/eq/quickstart-* runs/eq/he-*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plain", type=Path)
    parser.add_argument("he", type=Path)
    args = parser.parse_args()

    import numpy as np
    from safetensors.numpy import load_file

    from fedmirasol.client.he import HEOpener
    from fedmirasol.he.keyfiles import SIMULATION_KEYS_DIR, SITE_FILE, load_site
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.server.aggregators.he_step import ServerStepOnClients

    site = load_site(args.he / SIMULATION_KEYS_DIR / SITE_FILE)
    config = rundir.read_config(args.he)
    opener = HEOpener(ServerStepOnClients())
    plain_rounds = {r["round"]: r for r in rundir.read_metrics(args.plain)}
    he_rounds = {r["round"]: r for r in rundir.read_metrics(args.he)}
    print(f"{'round':>5} {'max |HE - plain|':>17} {'error bound':>12} {'train loss plain/HE':>22} "
          f"{'fed. acc plain/HE':>18}")
    for path in sorted((args.he / rundir.CHECKPOINT_DIR).glob("round-*.safetensors")):
        server_round = int(path.stem.split("-")[1])
        other = args.plain / rundir.CHECKPOINT_DIR / path.name
        if not other.is_file():
            continue
        state = {k[len("global/"):]: v for k, v in load_file(path).items()
                 if k.startswith("global/")}
        plain = {k[len("global/"):]: v for k, v in load_file(other).items()
                 if k.startswith("global/")}
        model, _ = opener.open_state(site, config, state)
        diff = max(float(np.abs(model[k] - plain[k]).max()) for k in plain)
        p, h = plain_rounds[server_round], he_rounds[server_round]
        print(f"{server_round:>5} {diff:>17.3g} {h.get('he_error_bound', float('nan')):>12.3g} "
              f"{p['train_loss']:>10.5f} {h['train_loss']:>10.5f} "
              f"{p['federated_accuracy']:>8.4f} {h['federated_accuracy']:>8.4f}")
    plain_report = json.loads((args.plain / rundir.REPORT_FILE).read_text())
    he_report = json.loads((args.he / rundir.REPORT_FILE).read_text())
    print(f"final test accuracy: plain {plain_report['final_centralized_accuracy']:.4f}, HE "
          f"{he_report['decrypted_final_test_accuracy']:.4f} (decrypted); final federated "
          f"accuracy: plain {plain_report['final_federated_accuracy']:.4f}, HE "
          f"{he_report['final_federated_accuracy']:.4f}")


if __name__ == "__main__":
    main()
