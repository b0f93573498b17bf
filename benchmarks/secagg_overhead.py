"""Round time and peak memory with and without secure aggregation, as ratios.

For each update size (1M, 10M, 50M float32 parameters) and mode, a fresh subprocess runs one
federated round of 5 clients over the in-process Grid (`fedmirasol.testing.local_grid`, arrays
serialized as Flower serializes them): the server sends the global vector, each client trains
an N-parameter linear model for `--steps` SGD steps on its own random batch (torch, 1 thread)
and answers with its delta; the server either validates the plain replies and lets FedAvg
aggregate them (`plain`: the app's own path, fedmirasol.server.loop) or runs the
five secure-aggregation stages and hands FedAvg the secure mean (`secagg`: range 1.0 as a
declared bound, 16 bits, every client a neighbour of every other, threshold 4 of 5).

Time is the round's wall time; memory is the subprocess's peak RSS (`peak`) and that peak
minus the RSS before the round (`round`). Clients run one after another in one process in
both modes, so the ratio is that of a deployment where they run in parallel.

    python benchmarks/secagg_overhead.py                          # 1M, 10M, 50M
    python benchmarks/secagg_overhead.py --sizes 1000000 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CLIENTS = 5


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def one_round(size: int, mode: str, steps: int, batch: int) -> dict[str, float]:
    """One round in this process (called in a fresh subprocess)."""
    import numpy as np
    import torch
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.core.parameters import from_record, to_record
    from fedmirasol.core.reply_checks import validate_train_replies
    from fedmirasol.server.loop import _aggregate
    from fedmirasol.secagg import client
    from fedmirasol.testing.local_grid import LocalGrid
    from fedmirasol.secagg.server import SecureAggregator, mean_reply
    from fedmirasol.config.secagg import SecAggConfig

    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    features = 1000
    shape = (size // features, features)
    global_shared = {"w": np.zeros(shape, np.float32)}

    def train(message: Message, context) -> Message:  # noqa: ANN001
        pid = int(context.node_config["partition-id"])
        start = from_record(message.content.array_records["arrays"])["w"]
        weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
        optimizer = torch.optim.SGD([weight], lr=1e-3)
        generator = torch.Generator().manual_seed(pid)
        for _ in range(steps):
            x = torch.randn(batch, features, generator=generator)
            y = torch.randn(batch, shape[0], generator=generator)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(x @ weight.T, y).backward()
            optimizer.step()
        delta = weight.detach().numpy() - start
        return Message(RecordDict({"arrays": to_record({"w": delta}), "metrics": MetricRecord(
            {"num-examples": batch * steps, "partition-id": pid})}), reply_to=message)

    app = ClientApp()
    app.train()(train)
    client.register(app, train=train)
    grid = LocalGrid(app, {10 + i: {"partition-id": i} for i in range(CLIENTS)})
    strategy = FedAvg()
    before = rss_mib()
    started = time.perf_counter()
    messages = [Message(RecordDict({"arrays": to_record(global_shared), "config": ConfigRecord(
        {"server-round": 1})}), dst_node_id=node, message_type=MessageType.TRAIN, group_id="1")
        for node in grid.get_node_ids()]
    if mode == "plain":
        replies = list(grid.send_and_receive(messages, timeout=600))
        accepted, rejected = validate_train_replies(replies, {"w": shape}, {})
        del replies
        new, reason = _aggregate(strategy, 1, accepted, global_shared)
    else:
        secure = SecureAggregator(SecAggConfig(enabled=True), [("w", shape)], 1.0, "examples")
        result = secure.run(grid, messages, 600, 1)
        rejected, reason = result.rejections, result.failure
        new, reason = _aggregate(strategy, 1, [mean_reply(result, messages[0])], global_shared)
    seconds = time.perf_counter() - started
    assert not rejected and reason is None, (rejected, reason)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "round_mib": peak - before,
            "mean_abs": float(np.abs(new["w"]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000,
                                                                 50_000_000])
    parser.add_argument("--steps", type=int, default=4, help="local SGD steps per client")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, mode = int(args.child[0]), args.child[1]
        print(json.dumps(one_round(size, mode, args.steps, args.batch)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{CLIENTS} clients, {args.steps} local steps of batch {args.batch}, one round each")
    print(f"{'params':>10} {'plain s':>8} {'secagg s':>9} {'time x':>7} {'plain MiB':>10} "
          f"{'secagg MiB':>11} {'peak x':>7} {'round x':>8}")
    for size in args.sizes:
        runs = {}
        for mode in ("plain", "secagg"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--child", str(size), mode],
                                 env=env, check=True, capture_output=True, text=True).stdout
            runs[mode] = json.loads(out.strip().splitlines()[-1])
        plain, secure = runs["plain"], runs["secagg"]
        print(f"{size:>10} {plain['seconds']:>8.2f} {secure['seconds']:>9.2f} "
              f"{secure['seconds'] / plain['seconds']:>7.2f} {plain['peak_mib']:>10.0f} "
              f"{secure['peak_mib']:>11.0f} {secure['peak_mib'] / plain['peak_mib']:>7.2f} "
              f"{secure['round_mib'] / plain['round_mib']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
