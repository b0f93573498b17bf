"""One round of plain FedAvg, secure aggregation (SecAgg+) and homomorphic encryption (CKKS)
side by side: time, peak memory, bytes down and up, as ratios to plain.

For each update size (1M, 10M, 50M float32 parameters) and mode, a fresh subprocess runs one
federated round of 5 clients over the in-process Grid (`fedmirasol.testing.local_grid`, arrays
serialized as Flower serializes them) through the app's own aggregator (`choose_aggregator`,
the run's reply filters) and the app's own release point (`release_train`, with HE's seal):
each client trains an N-parameter linear model for `--steps` SGD steps on its own random batch
(torch, 1 thread) and answers with its update.

- plain: the server sends the global model, FedAvg averages the updates;
- secagg: the five SecAgg+ stages (every client a neighbour of every other, threshold 4 of 5,
  16 bits, declared range), FedAvg on the secure mean;
- he: the server sends its encrypted state (the sum of the previous round's replies: a
  steady-state round, made untimed before it), each client decrypts it, trains, encrypts its
  proposal (one 60-bit prime, N = 8192, scale 2^40 unless --he-* says otherwise), the server
  adds the ciphertexts batch by batch.

Time is the round's wall time and the CPU time the process spent on it (one thread: torch's
and SEAL's work; on a machine shared with other jobs the CPU time is the steadier figure, and
the time ratio is taken from it); memory is the subprocess's peak RSS (`peak`) and that peak
minus the RSS before the round (`round`). Clients run one after another in one process in
every mode, so the ratios are those of a deployment where they run in parallel. With `--reference`,
also TenSEAL's CKKSVector with NVFlare's parameters (N = 8192, primes [60, 40, 40], scale 2^40,
public-key encryption): encryption time and bytes per value, the anchor of the bytes target.

With `--app CONFIG` it measures instead the app itself on a simulation config (the real model,
data and local training; the clients one after another over the in-process Grid): the CPU time
of round 2 (the first that starts from an encrypted state), plain against HE, and the bytes.

    python benchmarks/he_overhead.py                          # 1M, 10M, 50M
    python benchmarks/he_overhead.py --sizes 1000000 --reference
    python benchmarks/he_overhead.py --app simulations/quickstart.toml
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from secagg_overhead import CLIENTS, _secure_app, linear_sgd, rss_mib

FEATURES = 1000
MODES = ("plain", "secagg", "he")


def _config(mode: str, keys: Path | None, he: dict[str, object]):  # noqa: ANN202
    from fedmirasol.config import load_config

    values: dict[str, object] = {"data.num-clients": CLIENTS, "strategy.min-train-nodes": CLIENTS,
                                 "strategy.min-available-nodes": CLIENTS,
                                 "strategy.round-timeout": 3600.0}
    if mode == "secagg":
        values |= {"secagg.enabled": True, "secagg.reconstruction-fraction": 0.8,
                   "secagg.range": 1.0}
    if mode == "he":
        values |= {"he.enabled": True, "he.public-context": str(keys), "server.evaluate-every": 0,
                   **{f"he.{key}": value for key, value in he.items()}}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


class _Run:
    """What an aggregator uses of the run it serves (the round loop's FederatedRun)."""

    def __init__(self, grid, config, global_shared, run_dir: Path) -> None:  # noqa: ANN001
        from fedmirasol.core.metrics import Traffic
        from fedmirasol.privacy.server_side import ServerPrivacy
        from fedmirasol.server.filters import reply_filters
        from fedmirasol.server.strategy import build_strategy

        self.config = config
        self.grid = self.ordered = grid
        self.timeout = 3600.0
        self.partitions = {10 + i: i for i in range(CLIENTS)}
        self.strategy = build_strategy(config)
        self.global_shared = global_shared
        self.privacy = ServerPrivacy(config, run_dir, list(global_shared))
        self.filters = reply_filters(config, self.privacy,
                                     {k: v.shape for k, v in global_shared.items()})
        self.traffic = Traffic()  # bytes on the wire, as the round loop counts them

    def watch(self, *args) -> None:  # noqa: ANN002
        return None

    def check_registered(self, replies) -> None:  # noqa: ANN001
        pass


def one_round(size: int, mode: str, steps: int, batch: int, he: dict[str, object]
              ) -> dict[str, float]:
    """One round in this process (called in a fresh subprocess)."""
    import numpy as np
    import torch
    from flwr.app import ConfigRecord, Message
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.client.handlers import plain_global
    from fedmirasol.client.he import HEOpener
    from fedmirasol.client.release import release_train
    from fedmirasol.config import to_json
    from fedmirasol.core.parameters import to_record
    from fedmirasol.core.wire import CONFIG_KEY
    from fedmirasol.server.aggregators import choose_aggregator
    from fedmirasol.server.aggregators.he_step import ServerStepOnClients
    from fedmirasol.testing.local_grid import LocalGrid

    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    work = Path(tempfile.mkdtemp(prefix="he-overhead-"))
    keys = None
    if mode == "he":
        from fedmirasol.he.keyfiles import write_key_pair
        from fedmirasol.he.params import CkksParameters
        from fedmirasol.config.he import HEConfig

        params = CkksParameters.from_config(HEConfig(**{k.replace("-", "_"): v
                                                        for k, v in he.items()}))
        site_file, keys = write_key_pair(work / "keys", params)
    config = _config(mode, keys, he)
    shape = (size // FEATURES, FEATURES)
    # a trained-looking model: an all-zero one is identical array chunks, which Flower sends
    # once per message, flattering plain's down-bytes
    global_shared = {"w": (0.01 * np.random.default_rng(0).standard_normal(shape)
                           ).astype(np.float32)}
    opener = HEOpener(ServerStepOnClients(), str(site_file)) if mode == "he" else plain_global

    def train(message: Message, context) -> Message:  # noqa: ANN001
        pid = int(context.node_config["partition-id"])
        opened = opener(message, context, config)
        start = opened.global_shared["w"]
        update, loss = linear_sgd(start, pid, steps, batch)
        return release_train(message, config, pid, batch * steps, {"w": update},
                             {"train-loss": loss}, seal=opened.seal)

    app = _secure_app(train, train, config.secagg, CLIENTS)
    grid = LocalGrid(app, {10 + i: {"partition-id": i, "num-partitions": CLIENTS}
                           for i in range(CLIENTS)})
    run = _Run(grid, config, global_shared, work)
    aggregator = choose_aggregator(config, global_shared)
    record = ConfigRecord({CONFIG_KEY: to_json(config), "server-round": 1})
    if mode == "he":  # a steady-state round starts from an encrypted state: make one, untimed
        run.global_shared = _encrypted_state(site_file, config, global_shared)
    before = rss_mib()
    started, cpu = time.perf_counter(), time.process_time()
    messages = list(run.strategy.configure_train(2, to_record(run.global_shared), record, grid))
    outcome = aggregator.train(run, 2, messages, CLIENTS)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert not outcome.rejected and outcome.kept_reason is None, (outcome.rejected,
                                                                   outcome.kept_reason)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "round_mib": peak - before,
            "bytes_down": sum(run.traffic.down.values()),
            "bytes_up": sum(run.traffic.up.values()),
            **{k: v for k, v in outcome.figures.items()}}


def _encrypted_state(site_file: Path, config, global_shared):  # noqa: ANN001, ANN202
    """The server's state after a round whose 5 replies all proposed `global_shared`: one
    encryption, summed 5 times (the sum is what the server holds; its content is the model)."""
    from fedmirasol.he import codec, summing
    from fedmirasol.he.keyfiles import load_server, load_site
    from fedmirasol.he.wire import pack, read_header
    from fedmirasol.server.aggregators.he_step import ServerStepOnClients

    site = load_site(site_file)
    step = ServerStepOnClients()
    layout, values = step.segments(config, global_shared, step.initial_state(config, global_shared),
                                   {k: v * 0 for k, v in global_shared.items()})
    reply = codec.encrypt(site, layout, values, 1.0, config.he.batch_ciphertexts, CLIENTS)
    header = read_header(reply)
    batches, members, _ = summing.sum_replies(load_server(config.he.public_context), header,
                                              [reply] * CLIENTS)
    return pack(header.summed(1, len(members), CLIENTS, "setup"), batches)


def app_round(config_file: str, mode: str) -> dict[str, float]:
    """Rounds 1 and 2 of `config_file` through FederatedRun; round 2's CPU time and bytes."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.config import load_config
    from fedmirasol.engines.apps import build_client_app
    from fedmirasol.runs import run_dir as rundir
    from fedmirasol.server.loop import FederatedRun
    from fedmirasol.testing.local_grid import LocalGrid

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    work = Path(tempfile.mkdtemp(prefix="he-app-"))
    overrides = {"num-rounds": 2, "client.threads": 1, "server.evaluate-every": 0,
                 "output.plots": False}
    secret = None
    if mode == "he":
        from fedmirasol.he.keyfiles import write_key_pair
        from fedmirasol.he.params import CkksParameters

        secret, public = write_key_pair(work / "keys", CkksParameters())
        overrides |= {"he.enabled": True, "he.public-context": str(public)}
    config = load_config(Path(config_file), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    clients = config.data.num_clients
    grid = LocalGrid(build_client_app(he_secret=str(secret) if secret else None),
                     {100 + i: {"partition-id": i, "num-partitions": clients}
                      for i in range(clients)})
    run_dir = work / "run"
    run_dir.mkdir()
    rundir.write_config(run_dir, config)
    marks = [time.process_time()]
    records = []

    def progress(record) -> None:  # noqa: ANN001
        marks.append(time.process_time())
        records.append(record)

    FederatedRun(grid, config, run_dir, progress=progress).run()
    second = records[-1]
    return {"cpu_seconds": marks[-1] - marks[-2], "bytes_down": second["bytes_down"],
            "bytes_up": second["bytes_up"], "train_loss": second["train_loss"],
            **({"he_error_bound": second["he_error_bound"]} if mode == "he" else {})}


def app(config_file: str, env: dict[str, str]) -> None:
    runs = {}
    for mode in ("plain", "he"):
        out = subprocess.run([sys.executable, __file__, "--app", config_file, "--child", "0", mode],
                             env=env, check=True, capture_output=True, text=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    plain, he = runs["plain"], runs["he"]
    print(f"{config_file}, round 2 (clients one after another, 1 thread): CPU "
          f"{plain['cpu_seconds']:.1f} s plain, {he['cpu_seconds']:.1f} s HE "
          f"({he['cpu_seconds'] / plain['cpu_seconds']:.2f}x); "
          f"MB down {plain['bytes_down'] / 1e6:.1f} / {he['bytes_down'] / 1e6:.1f} "
          f"({he['bytes_down'] / plain['bytes_down']:.2f}x), MB up {plain['bytes_up'] / 1e6:.1f} / "
          f"{he['bytes_up'] / 1e6:.1f} ({he['bytes_up'] / plain['bytes_up']:.2f}x); train loss "
          f"{plain['train_loss']:.6f} / {he['train_loss']:.6f}; error bound "
          f"{he['he_error_bound']:.2g}", flush=True)


def reference(size: int) -> dict[str, float]:
    """TenSEAL's CKKSVector with NVFlare's parameters: encryption seconds and bytes a value."""
    import numpy as np
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                         coeff_mod_bit_sizes=[60, 40, 40])
    context.global_scale = 2 ** 40
    values = np.random.default_rng(0).normal(size=size) * 0.01
    started = time.perf_counter()
    data = [ts.ckks_vector(context, values[i:i + 4096]).serialize()
            for i in range(0, size, 4096)]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes_per_value": sum(map(len, data)) / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000,
                                                                 50_000_000])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=4, help="local SGD steps per client")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--he-poly-modulus-degree", type=int, default=8192)
    parser.add_argument("--he-coeff-bits", default="60")
    parser.add_argument("--he-scale-bits", type=int, default=40)
    parser.add_argument("--reference", action="store_true",
                        help="also TenSEAL's CKKSVector with NVFlare's parameters (1M values)")
    parser.add_argument("--app", metavar="CONFIG", help="measure the app on this simulation "
                        "config instead (plain and HE, round 2)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    he = {"poly-modulus-degree": args.he_poly_modulus_degree, "coeff-bits": args.he_coeff_bits,
          "scale-bits": args.he_scale_bits}
    if args.child:
        size, mode = int(args.child[0]), args.child[1]
        if args.app:
            result = app_round(args.app, mode)
        elif mode == "reference":
            result = reference(size)
        else:
            result = one_round(size, mode, args.steps, args.batch, he)
        print(json.dumps(result))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.app:
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        app(args.app, env)
        return
    print(f"{CLIENTS} clients, {args.steps} local steps of batch {args.batch}, one round each; "
          f"HE: N = {he['poly-modulus-degree']}, primes {he['coeff-bits']}, scale "
          f"2^{he['scale-bits']}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'params':>10} {'mode':>7} {'wall s':>7} {'CPU s':>7} {'time x':>7} {'peak MiB':>9} "
          f"{'peak x':>7} "
          f"{'round x':>8} {'MB down':>9} {'down x':>7} {'MB up':>8} {'up x':>6}", flush=True)
    for size in args.sizes:
        runs = {}
        for mode in args.modes:
            out = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch),
                 "--he-poly-modulus-degree", str(args.he_poly_modulus_degree), "--he-coeff-bits",
                 args.he_coeff_bits, "--he-scale-bits", str(args.he_scale_bits),
                 "--child", str(size), mode],
                env=env, check=True, capture_output=True, text=True).stdout
            runs[mode] = result = json.loads(out.strip().splitlines()[-1])
            base = runs.get("plain", result)
            print(f"{size:>10} {mode:>7} {result['seconds']:>7.1f} {result['cpu_seconds']:>7.1f} "
                  f"{result['cpu_seconds'] / base['cpu_seconds']:>7.2f} {result['peak_mib']:>9.0f} "
                  f"{result['peak_mib'] / base['peak_mib']:>7.2f} "
                  f"{result['round_mib'] / max(base['round_mib'], 1):>8.2f} "
                  f"{result['bytes_down'] / 1e6:>9.1f} "
                  f"{result['bytes_down'] / base['bytes_down']:>7.2f} "
                  f"{result['bytes_up'] / 1e6:>8.1f} {result['bytes_up'] / base['bytes_up']:>6.2f}"
                  + (f"  error bound {result['he_error_bound']:.2g}, sum "
                     f"{result['he_sum_seconds']:.1f} s" if "he_error_bound" in result else ""),
                  flush=True)
    if args.reference:
        out = subprocess.run([sys.executable, __file__, "--child", "1000000", "reference"],
                             env=env, check=True, capture_output=True, text=True).stdout
        ref = json.loads(out.strip().splitlines()[-1])
        print(f"reference (TenSEAL CKKSVector, NVFlare's parameters, 1M values): encryption "
              f"{ref['seconds']:.2f} s, {ref['bytes_per_value']:.2f} bytes a value "
              f"({ref['bytes_per_value'] / 4:.2f}x float32)", flush=True)


if __name__ == "__main__":
    main()
