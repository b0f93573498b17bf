"""Scale: 1,000 virtual clients with 10 sampled a round, per-client state kept on disk and read
only for the clients a message reaches, and Flower's Ray engine attached to an existing Ray
cluster (`simulation.ray-address`)."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import state as client_state
from fedmirasol.config import load_config
from fedmirasol.engines.apps import build_client_app
from fedmirasol.engines.simulation import simulate
from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.server import nodes
from fedmirasol.server.loop import FederatedRun
from fedmirasol.testing.local_grid import LocalGrid

ROOT = Path(__file__).resolve().parents[1]
MIRROR = re.compile(r"client-(\d{5})-round-(\d{5})\.safetensors$")


def _thousand_clients(tmp_path: Path, *extra: str):
    """The many-clients-1k simulation (FedBN: normalization layers stay on each client), cut
    to tiny data and a few rounds."""
    return load_config(ROOT / "simulations" / "many-clients-1k.toml", [
        "data.clips-per-client=4", "data.test-clips=8", "client.batch-size=4",
        "client.threads=1", "output.plots=false", f"output.runs-dir='{tmp_path}'", *extra])


def _mirrored(run_dir: Path) -> dict[int, set[int]]:
    """{partition id: rounds} of the state mirrors in the run's client-state/."""
    found: dict[int, set[int]] = {}
    for path in (run_dir / "client-state").glob("client-*.safetensors"):
        pid, server_round = map(int, MIRROR.search(path.name).groups())
        found.setdefault(pid, set()).add(server_round)
    return found


def test_state_of_unsampled_clients_is_never_read_nor_kept(tmp_path: Path,
                                                           monkeypatch) -> None:
    """The real server loop and ClientApp, in process, over 1,000 nodes for 2 rounds: every
    state file read belongs to a client a message of that round reached; no client holds
    arrays in memory between messages; only clients that trained have state on disk."""
    monkeypatch.setenv("FEDMIRASOL_CACHE", str(tmp_path / "cache"))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    # Seed 6 samples one client twice in these 2 rounds (to be read back once).
    config = _thousand_clients(tmp_path, "num-rounds=2", "seed=6")
    reached: dict[int, set[tuple[str, int]]] = {}  # round -> (train/evaluate, partition id)
    reads: list[tuple[int, int]] = []  # (round being run, partition id of the file read)
    current = {"round": 0}
    read_mirror = client_state.read_mirror

    def spying_read(path: Path):  # noqa: ANN202
        reads.append((current["round"], int(MIRROR.search(Path(path).name).group(1))))
        return read_mirror(path)

    monkeypatch.setattr(client_state, "read_mirror", spying_read)

    grid = LocalGrid(build_client_app(), {100 + i: {"partition-id": i, "num-partitions": 1000}
                                          for i in range(1000)})
    app = grid.app

    def client_app(message, context):  # noqa: ANN001, ANN202 - notes who gets what, when
        record = message.content.config_records.get("config", {})
        if message.metadata.message_type.split(".")[0] in ("train", "evaluate"):
            current["round"] = int(record["server-round"])
            reached.setdefault(current["round"], set()).add(
                (message.metadata.message_type.split(".")[0], context.node_id - 100))
        return app(message, context)

    grid.app = client_app
    listings = Counter()  # round -> listings of the 1,000 nodes while the round ran
    list_nodes, run_round = grid.get_node_ids, FederatedRun.run_round
    in_round = {"round": 0}

    def counted_listing():  # noqa: ANN202
        listings[in_round["round"]] += 1
        return list_nodes()

    def counted_round(run: FederatedRun, server_round: int):  # noqa: ANN202
        in_round["round"] = server_round
        try:
            return run_round(run, server_round)
        finally:
            in_round["round"] = 0

    grid.get_node_ids = counted_listing
    monkeypatch.setattr(FederatedRun, "run_round", counted_round)
    run_dir = rundir.create(config.output.runs_dir, config.name)
    rundir.write_config(run_dir, config)
    FederatedRun(grid, config, run_dir).run()

    metrics = rundir.read_metrics(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]
    trained = [set(r["participants"]) for r in metrics[1:]]
    assert [len(t) for t in trained] == [10, 10]
    assert all(math.isfinite(r["centralized_accuracy"]) for r in metrics[1:])
    assert all(len(sent) == 20 for sent in reached.values())  # 10 train + 10 evaluate
    mirrored = _mirrored(run_dir)
    assert set(mirrored) == set().union(*trained)
    # A client reads its state back exactly when a message reaches it after it trained
    # (training reads the previous rounds' state, evaluation that of its own round too);
    # nobody else's state is ever read.
    expected = Counter()
    for server_round, sent in reached.items():
        for stage, pid in sent:
            first = min(mirrored.get(pid, {math.inf}))
            if first <= (server_round - 1 if stage == "train" else server_round):
                expected[(server_round, pid)] += 1
    assert expected and Counter(reads) == expected, (reads, expected)
    # The engine keeps nobody's arrays between messages.
    assert not any(context.state.array_records for context in grid.contexts.values())
    # Listing the nodes is O(federation size) in Flower's engines: once to draw the training
    # clients (count and sample), once for the evaluating ones, each round.
    assert listings[1] == listings[2] == 2, listings


def test_a_listing_is_reused_only_while_young(monkeypatch) -> None:
    """A strategy's count and draw share one listing; one waiting for nodes (Flower lists
    again every second) sees those that connected meanwhile."""
    connected = [1, 2]
    calls = []

    class Nodes:
        def get_node_ids(self) -> list[int]:
            calls.append(1)
            return list(connected)

    clock = {"now": 100.0}
    monkeypatch.setattr(nodes.time, "monotonic", lambda: clock["now"])
    listed = nodes.ListedOnce(Nodes())
    assert listed.get_node_ids() == listed.get_node_ids() == [1, 2] and len(calls) == 1
    connected.append(3)
    clock["now"] += nodes.LISTING_REUSE_S
    assert listed.get_node_ids() == [1, 2, 3] and len(calls) == 2


def _ray_head(tmp_path: Path, temp_dir: str) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on a free port in its own session, once it accepts
    connections; (process, address). `temp_dir` is short: Ray's socket paths must fit 107
    bytes."""
    from fedmirasol.testing.loopback import Loopback, free_port

    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    log = tmp_path / "ray.log"
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--temp-dir", temp_dir],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)

    def up() -> bool:
        assert head.poll() is None, log.read_text()[-2000:]
        return "Ray runtime started" in log.read_text(errors="replace")

    Loopback.wait_for(up, 300, "ray start --head")
    return head, f"127.0.0.1:{port}"


def _stop(head: subprocess.Popen) -> None:
    """Stop the head by its PID (SIGTERM to its session: `ray start --block` takes its
    daemons down with it), then SIGKILL whatever is left of that session."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_a_thousand_client_simulation_on_an_existing_ray_cluster(tmp_path: Path) -> None:
    """Flower's Ray engine attached to a `ray start --head` this test started: 1,000 virtual
    clients, 10 trained in a round; the cluster outlives the run (and is stopped by its
    PID)."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head, address = _ray_head(tmp_path, temp_dir)
    try:
        config = _thousand_clients(tmp_path / "runs", "num-rounds=1",
                                   "strategy.fraction-evaluate=0.0",
                                   f"simulation.ray-address='{address}'")
        started = time.monotonic()
        run = simulate(config, progress=None)
        took = time.monotonic() - started
        metrics = rundir.read_metrics(run)
        assert [len(r["participants"]) for r in metrics[1:]] == [10]
        assert not any(r["rejected"] for r in metrics[1:])
        assert set(_mirrored(run)) == set().union(*(r["participants"] for r in metrics[1:]))
        assert head.poll() is None, (tmp_path / "ray.log").read_text()[-2000:]
        assert took < 600
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert head.poll() is not None


def test_a_ray_address_with_no_cluster_is_a_config_error(tmp_path: Path) -> None:
    from fedmirasol.testing.loopback import free_port

    config = _thousand_clients(tmp_path, "num-rounds=1",
                               f"simulation.ray-address='127.0.0.1:{free_port()}'")
    with pytest.raises(ConfigError, match="simulation.ray-address"):
        simulate(config, progress=None)
