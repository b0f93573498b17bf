"""A real deployment on loopback: one SuperLink and three SuperNodes as separate processes,
TLS and SuperNode authentication, the project's Flower app under `flwr run`.

Run on their own with ``pytest -m deployment`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from fedmirasol.deploy.loopback import Loopback
from fedmirasol.federated import run_dir as rundir

pytestmark = pytest.mark.deployment
STEP = 600.0  # seconds any one stage may take on a loaded 2-core machine


def _run_toml(root: Path) -> Path:
    """Two rounds of the tiny model on a few synthetic clips, with DP-SGD on every client."""
    path = root / "run.toml"
    path.write_text(f"""
name = "loopback"
num-rounds = 2
[model]
name = "tiny"
num-frames = 8
[data]
num-clients = 3
clips-per-client = 12
test-clips = 16
val-fraction = 0.25
partitioner = "iid"
[client]
local-epochs = 1
batch-size = 4
threads = 1
[strategy]
min-train-nodes = 2
min-evaluate-nodes = 1
min-available-nodes = 2
round-timeout = 300.0
[privacy]
enabled = true
noise-multiplier = 1.0
max-grad-norm = 1.0
[output]
runs-dir = "{root / 'runs'}"
""")
    return path


def _node_config(root: Path, i: int) -> dict:
    return {"partition-id": i, "num-partitions": 3, "state-dir": str(root / f"site{i}")}


def _mirrors(root: Path, i: int) -> dict[int, dict]:
    """Node i's state mirrors on its own disk: {round: {record: arrays}}."""
    found = {}
    for path in (root / f"site{i}").glob(f"*/client-{i:05d}-round-*.pkl"):
        with path.open("rb") as handle:
            found[int(path.stem.rsplit("-", 1)[1])] = pickle.load(handle)
    return found


def _steps(mirror: dict) -> int:
    from fedmirasol.privacy.accountant_state import accountant_from_arrays, total_steps
    from fedmirasol.privacy.client_round import STATE_KEY

    return total_steps(accountant_from_arrays(dict(mirror[STATE_KEY])))


def _run_dir(root: Path) -> Path | None:
    dirs = list((root / "runs").glob("loopback-*"))
    return dirs[0] if dirs else None


def _rounds(run_dir: Path | None) -> list[int]:
    return [r["round"] for r in rundir.read_metrics(run_dir)] if run_dir else []


def test_unregistered_key_and_plaintext_client_are_refused(tmp_path):
    with Loopback(tmp_path, nodes=1) as link:
        link.start_superlink()
        link.register(0)
        # node key 1 was made but never registered
        stranger = link.start_supernode(1, {"partition-id": 0}, name="stranger", max_retries=2)
        plain = link.start_supernode(0, {"partition-id": 0}, name="plain", insecure=True,
                                     max_retries=2)
        assert stranger.wait(timeout=STEP) != 0
        assert plain.wait(timeout=STEP) != 0
        assert "Failed to activate SuperNode" in link.log("stranger")
        assert "No SuperNode found with the given public key" in link.log("superlink")
        assert "could not establish a connection" in link.log("plain")
        registered = link.start_supernode(0, {"partition-id": 0}, name="member")
        link.wait_for(lambda: "SuperNode ID" in link.log("member"), STEP, "the member node")
        assert registered.poll() is None


def test_two_rounds_survive_node_restart_node_loss_and_superlink_restart(tmp_path):
    """Round 1 runs; node 1 is killed after training it and restarted; the SuperLink (with its
    ServerApp) is killed after round 1 and restarted on its database; the run resumes from
    its round-1 checkpoint; node 2 is killed during round 2; the run still finishes."""
    config_file = _run_toml(tmp_path)
    with Loopback(tmp_path, nodes=3) as link:
        link.start_superlink()
        for i in range(3):
            link.register(i)
            link.start_supernode(i, _node_config(tmp_path, i))
        first = link.run({"config-file": str(config_file)})

        # Node 1 dies once it has trained round 1, and comes back.
        link.wait_for(lambda: 1 in _mirrors(tmp_path, 1), STEP, "node 1 to train round 1")
        link.restart_supernode(1, _node_config(tmp_path, 1))

        # The SuperLink (and the ServerApp under it) dies after round 1.
        link.wait_for(lambda: 1 in _rounds(_run_dir(tmp_path)), STEP, "round 1")
        run_dir = _run_dir(tmp_path)
        link.kill("superlink")
        assert rundir.latest_checkpoint(run_dir).server_round >= 1
        link.start_superlink()
        second = link.run({"config-file": str(config_file),
                           "output.resume-from": str(run_dir)})
        assert second != first

        # Node 2 dies during round 2 (once it has the round's train message).
        trains = link.log("node2").count("Receiving: train message")
        link.wait_for(lambda: link.log("node2").count("Receiving: train message") > trains,
                      STEP, "round 2 to reach node 2")
        link.kill("node2")

        link.wait_for(lambda: link.run_status(second).startswith("finished"), 2 * STEP,
                      "the resumed run to finish")
        assert link.run_status(second) == "finished:completed", link.log("superlink")[-3000:]

    metrics = rundir.read_metrics(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]  # every round once
    last = metrics[-1]
    assert 2 not in last["participants"] and {0, 1} <= set(last["participants"])
    assert (run_dir / rundir.REPORT_FILE).is_file() and (run_dir / "final_model.pt").is_file()
    assert last["centralized_accuracy"] is not None

    # Node 1 kept its accountant across its restart: round 2 adds to round 1's steps.
    mirrors = _mirrors(tmp_path, 1)
    assert {1, 2} <= set(mirrors)
    first_steps = _steps(mirrors[1])
    assert first_steps > 0 and _steps(mirrors[2]) == 2 * first_steps

    ledger = run_dir / "privacy-ledger.jsonl"
    if ledger.exists():  # written by the server once DP reaches the ServerApp
        rows = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
        from fedmirasol.privacy.ledger import read

        kept = [(r.get("kind"), r.get("partition-id"), r["round"]) for r in read(run_dir)]
        assert len(kept) == len(set(kept)) and rows
