"""What secure aggregation (active security: signed keys, consistency round) costs.

`overhead`: for each update size (1M, 10M, 50M float32 parameters) a fresh subprocess runs one
federated round of 5 clients over the in-process Grid (`fedmirasol.testing.local_grid`, arrays
serialized as Flower serializes them), plain and secure side by side (alternating, the same
script): the server sends the global vector, each client trains an N-parameter linear model
for `--steps` SGD steps on its own random batch (torch, 1 thread) and answers with its delta;
the server either validates the plain replies and lets FedAvg aggregate them (`plain`: the
app's own path, `fedmirasol.server.aggregators.mean`) or runs the secure-aggregation stages
(keys signed with provisioned long-term keys, shares, masking, consistency, unmasking) and
hands FedAvg the secure mean (`secagg`: the defaults: range 1.0, 16 bits, every client a
neighbour of every other, threshold 4 of 5, weights up to strategy.max-num-examples = 100,000,
hence a 64-bit sum field; `secagg-32`: weights up to 5,000, a 32-bit field). Time is the
round's wall time; memory is the subprocess's peak RSS.

`scaling`: SecAgg+ with n = 10 ... 100 clients, each with 2 ceil(log2 n) ring neighbours, a fixed
update of `--size` values (no training): every client's own time (all its stages) and the
server's time, per client. SecAgg+ should cost each client O(log n), not O(n).

Clients run one after another in one process, so the ratios are those of a deployment where
they run in parallel.

    python benchmarks/secagg_overhead.py                            # both
    python benchmarks/secagg_overhead.py overhead --sizes 1000000 --steps 2
    python benchmarks/secagg_overhead.py scaling --clients 10 25 50 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

CLIENTS = 5
MODES = {"plain": None, "secagg": 100_000, "secagg-32": 5_000}  # mode -> weight bound


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _secure_app(train, evaluate, settings, count: int):  # noqa: ANN001, ANN202
    """A ClientApp with `train` and the secure-aggregation stages, `count` provisioned
    identities (one per partition)."""
    from flwr.clientapp import ClientApp

    from fedmirasol.secagg import client
    from fedmirasol.secagg.identity import provision

    identities = provision(count)
    app = ClientApp()
    app.train()(train)
    client.register(app, client.ClientHooks(
        train=train, evaluate=evaluate, run_seed=lambda message: 0,
        settings=lambda message, context: settings,
        identity=lambda message, context: identities[int(context.node_config["partition-id"])],
        nothing_to_contribute=lambda message, context: None))
    return app


def linear_sgd(start, seed: int, steps: int, batch: int):  # noqa: ANN001, ANN201
    """A client's local work: `steps` SGD steps of the linear model `start` (outputs x inputs)
    on random batches seeded by `seed` (torch, 1 thread); the update and the last loss."""
    import torch

    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = torch.optim.SGD([weight], lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, start.shape[1], generator=generator)
        y = torch.randn(batch, start.shape[0], generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(x @ weight.T, y)
        loss.backward()
        optimizer.step()
    return weight.detach().numpy() - start, float(loss.detach())


def one_round(size: int, mode: str, steps: int, batch: int) -> dict[str, float]:
    """One round of `overhead` in this process (called in a fresh subprocess)."""
    import numpy as np
    import torch
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.config.secagg import SecAggConfig
    from fedmirasol.core.parameters import from_record, to_record
    from fedmirasol.core.reply_checks import validate_train_replies
    from fedmirasol.secagg.server import SecureAggregator, mean_reply
    from fedmirasol.server.aggregators.mean import strategy_step
    from fedmirasol.testing.local_grid import LocalGrid

    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    features = 1000
    shape = (size // features, features)
    global_shared = {"w": np.zeros(shape, np.float32)}

    def train(message: Message, context) -> Message:  # noqa: ANN001
        pid = int(context.node_config["partition-id"])
        start = from_record(message.content.array_records["arrays"])["w"]
        delta, _ = linear_sgd(start, pid, steps, batch)
        return Message(RecordDict({"arrays": to_record({"w": delta}), "metrics": MetricRecord(
            {"num-examples": batch * steps, "partition-id": pid})}), reply_to=message)

    settings = SecAggConfig(enabled=True)
    app = _secure_app(train, train, settings, CLIENTS)
    grid = LocalGrid(app, {10 + i: {"partition-id": i} for i in range(CLIENTS)})
    strategy = FedAvg()

    def aggregate(state: dict[str, np.ndarray]) -> tuple[list, str | None]:
        messages = [Message(RecordDict({"arrays": to_record(state), "config": ConfigRecord(
            {"server-round": 1})}), dst_node_id=node, message_type=MessageType.TRAIN,
            group_id="1") for node in grid.get_node_ids()]
        if mode == "plain":
            replies = list(grid.send_and_receive(messages, timeout=600))
            accepted, rejected = validate_train_replies(replies, {"w": state["w"].shape}, {})
            del replies
            return rejected, strategy_step(strategy, 1, accepted, state)[1]
        secure = SecureAggregator(settings, [("w", state["w"].shape)], 1.0, "examples",
                                  MODES[mode])
        result = secure.run(grid, messages, 600, 1)
        if result.failure is not None:
            return result.rejections, result.failure
        return result.rejections, strategy_step(strategy, 1, [mean_reply(result, messages[0])],
                                                state)[1]

    aggregate({"w": np.zeros((1, features), np.float32)})  # warm-up: lazy imports, keys
    before = rss_mib()
    started = time.perf_counter()
    rejected, reason = aggregate(global_shared)
    seconds = time.perf_counter() - started
    assert not rejected and reason is None, (rejected, reason)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "round_mib": peak - before}


def neighbours_for(clients: int) -> int:
    """SecAgg+'s ring degree for `clients`: 2 ceil(log2 n) (all others when that is more)."""
    return min(2 * math.ceil(math.log2(clients)), clients - 1 - (clients - 1) % 2)


def scaling_round(clients: int, size: int) -> dict[str, float]:
    """One SecAgg+ round of `clients` stand-in clients with a fixed update (no training)."""
    import numpy as np
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.config.secagg import SecAggConfig
    from fedmirasol.core.parameters import to_record
    from fedmirasol.secagg.server import SecureAggregator
    from fedmirasol.testing.local_grid import LocalGrid

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    update = {"w": np.random.default_rng(0).uniform(-0.5, 0.5, size).astype(np.float32)}

    def train(message: Message, context) -> Message:  # noqa: ANN001
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"arrays": to_record(update), "metrics": MetricRecord(
            {"num-examples": 100, "partition-id": pid})}), reply_to=message)

    k = neighbours_for(clients)
    settings = SecAggConfig(enabled=True, num_neighbours=k)
    app = _secure_app(train, train, settings, clients)
    client_seconds = 0.0

    def timed(message: Message, context) -> Message:  # noqa: ANN001
        nonlocal client_seconds
        started = time.perf_counter()
        try:
            return app(message, context)
        finally:
            client_seconds += time.perf_counter() - started

    grid = LocalGrid(timed, {1000 + i: {"partition-id": i} for i in range(clients)})
    messages = [Message(RecordDict({"arrays": to_record({"w": np.zeros(size, np.float32)}),
                                    "config": ConfigRecord({"server-round": 1})}),
                        dst_node_id=node, message_type=MessageType.TRAIN, group_id="1")
                for node in grid.get_node_ids()]
    secure = SecureAggregator(settings, [("w", (size,))], 1.0, "examples")
    started = time.perf_counter()
    result = secure.run(grid, messages, 600, 1)
    seconds = time.perf_counter() - started
    assert result.failure is None, result.failure
    assert float(np.abs(result.mean["w"] - update["w"]).max()) < 1e-4
    return {"clients": clients, "neighbours": k, "seconds": seconds,
            "client_s_per_client": client_seconds / clients,
            "server_s_per_client": (seconds - client_seconds) / clients}


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def overhead(sizes: list[int], steps: int, batch: int) -> None:
    print(f"{CLIENTS} clients, {steps} local steps of batch {batch}, one round each; "
          "ratios against plain")
    print(f"{'params':>10} {'mode':>10} {'s':>8} {'time x':>7} {'peak MiB':>9} {'peak x':>7}")
    for size in sizes:
        runs = {mode: _child(["round", str(size), mode, str(steps), str(batch)])
                for mode in MODES}
        plain = runs["plain"]
        for mode, got in runs.items():
            print(f"{size:>10} {mode:>10} {got['seconds']:>8.2f} "
                  f"{got['seconds'] / plain['seconds']:>7.2f} {got['peak_mib']:>9.0f} "
                  f"{got['peak_mib'] / plain['peak_mib']:>7.2f}", flush=True)


def scaling(counts: list[int], size: int) -> None:
    print(f"SecAgg+ round, update of {size} values, no training; seconds per client")
    print(f"{'clients':>8} {'k':>4} {'round s':>8} {'client s':>9} {'server s':>9}")
    for clients in counts:
        got = _child(["scaling", str(clients), str(size)])
        print(f"{clients:>8} {got['neighbours']:>4} {got['seconds']:>8.2f} "
              f"{got['client_s_per_client']:>9.3f} {got['server_s_per_client']:>9.3f}",
              flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, *values = sys.argv[2:]
        if kind == "round":
            size, mode, steps, batch = values
            print(json.dumps(one_round(int(size), mode, int(steps), int(batch))))
        else:
            print(json.dumps(scaling_round(int(values[0]), int(values[1]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["overhead", "scaling", "both"],
                        default="both")
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--steps", type=int, default=4, help="local SGD steps per client")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--size", type=int, default=1_000_000, help="update size (scaling)")
    args = parser.parse_args()
    if args.what in ("overhead", "both"):
        overhead(args.sizes, args.steps, args.batch)
    if args.what in ("scaling", "both"):
        scaling(args.clients, args.size)


if __name__ == "__main__":
    main()
