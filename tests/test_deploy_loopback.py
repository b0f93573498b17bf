"""A real deployment on loopback: one SuperLink and three SuperNodes as separate processes,
TLS and SuperNode authentication, the project's Flower app under `flwr run`.

Run on their own with ``pytest -m deployment`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedmirasol.testing.loopback import Loopback
from fedmirasol.client import state as client_state
from fedmirasol.runs import run_dir as rundir

pytestmark = pytest.mark.deployment
STEP = 600.0  # seconds any one stage may take on a loaded 2-core machine


def _run_toml(root: Path, *, dp: bool = True, secagg: bool = False) -> Path:
    """Two rounds of the tiny model on a few synthetic clips (FedBN: normalization layers stay
    on the clients), with DP-SGD on every client and/or secure aggregation."""
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
name = "fedbn"
min-train-nodes = 2
min-evaluate-nodes = 1
min-available-nodes = 2
round-timeout = 300.0
[output]
runs-dir = "{root / 'runs'}"
""" + ("[privacy]\nenabled = true\nnoise-multiplier = 1.0\nmax-grad-norm = 1.0\n" if dp else "")
      + ("[secagg]\nenabled = true\nreconstruction-fraction = 0.6\nmin-contributors = 2\n"
         if secagg else ""))
    return path


def _node_config(root: Path, i: int) -> dict:
    return {"partition-id": i, "num-partitions": 3, "state-dir": str(root / f"site{i}")}


def _mirrors(root: Path, i: int) -> dict[int, dict]:
    """Node i's state mirrors on its own disk: {round: {record: arrays}}."""
    found = {}
    for path in (root / f"site{i}").glob(f"*/client-{i:05d}-round-*.safetensors"):
        found[int(path.stem.rsplit("-", 1)[1])] = client_state.read_mirror(path)
    return found


def _steps(root: Path, i: int, up_to_round: int) -> int:
    """DP steps node i charged to its release log in rounds <= `up_to_round`."""
    from fedmirasol.privacy.release_log import ReleaseLog

    log = ReleaseLog.on_disk(root / f"site{i}" / "privacy" / "default.jsonl")
    return sum(line["steps"] for line in log.lines
               if "steps" in line and line["round"] <= up_to_round)


def _run_dir(root: Path) -> Path | None:
    dirs = list((root / "runs").glob("loopback-*"))
    return dirs[0] if dirs else None


def _rounds(run_dir: Path | None) -> list[int]:
    return [r["round"] for r in rundir.read_metrics(run_dir)] if run_dir else []


def _start_federation(link: Loopback, root: Path) -> None:
    link.start_superlink()
    for i in range(3):
        link.register(i)
        link.start_supernode(i, _node_config(root, i))


def _kill_during_round_2(link: Loopback, i: int) -> None:
    """Kill SuperNode i once it has received round 2's train message."""
    seen = link.log(f"node{i}").count("Receiving: train")
    link.wait_for(lambda: link.log(f"node{i}").count("Receiving: train") > seen,
                  STEP, f"round 2 to reach node {i}")
    link.kill(f"node{i}")


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
        _start_federation(link, tmp_path)
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
        _kill_during_round_2(link, 2)

        link.wait_for(lambda: link.run_status(second).startswith("finished"), 2 * STEP,
                      "the resumed run to finish")
        assert link.run_status(second) == "finished:completed", link.log("superlink")[-3000:]

    metrics = rundir.read_metrics(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]  # every round once
    last = metrics[-1]
    assert 2 not in last["participants"] and {0, 1} <= set(last["participants"])
    assert (run_dir / rundir.REPORT_FILE).is_file() and (run_dir / "final_model.pt").is_file()
    assert last["centralized_accuracy"] is not None

    # Node 1 continued from its own disk after its restart: local layers trained on from
    # round 1's (never reset to the initial ones), and its accountant adds round 2's steps.
    mirrors = _mirrors(tmp_path, 1)
    assert {1, 2} <= set(mirrors)
    assert "local-params" in mirrors[2]
    first_steps = _steps(tmp_path, 1, 1)
    assert first_steps > 0 and _steps(tmp_path, 1, 2) == 2 * first_steps

    from fedmirasol.privacy.ledger import read  # one row per client and round, none twice

    kept = [(r.get("kind"), r.get("partition-id"), r["round"]) for r in read(run_dir)]
    assert kept and len(kept) == len(set(kept))


def test_secure_aggregation_survives_a_node_lost_in_round_2(tmp_path):
    """SecAgg+ between separate SuperNode processes, each signing its round keys with its real
    SuperNode key (checked against registry.pub), with DP-SGD on the clients; node 2 dies
    during round 2, the survivors' masked sum is still unmasked, and the privacy ledger has
    each survivor's row per round. With 3
    clients the default reconstruction fraction (0.67) needs all 3 share holders
    (ceil(0.67 * 3) = 3) and so recovers no dropout; 0.6 needs 2."""
    config_file = _run_toml(tmp_path, dp=True, secagg=True)
    with Loopback(tmp_path, nodes=3) as link:
        _start_federation(link, tmp_path)
        run_id = link.run({"config-file": str(config_file)})
        link.wait_for(lambda: 1 in _rounds(_run_dir(tmp_path)), STEP, "round 1")
        _kill_during_round_2(link, 2)
        link.wait_for(lambda: link.run_status(run_id).startswith("finished"), 2 * STEP,
                      "the run to finish")
        assert link.run_status(run_id) == "finished:completed", link.log("superlink")[-3000:]
    metrics = rundir.read_metrics(_run_dir(tmp_path))
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert metrics[1]["aggregate_kept_previous"] is None
    assert metrics[2]["aggregate_kept_previous"] is None and 2 not in metrics[2]["participants"]
    from fedmirasol.privacy.ledger import read

    rows = [r for r in read(_run_dir(tmp_path)) if r["kind"] == "client"]
    rounds_of = {pid: sorted(r["round"] for r in rows if r["partition-id"] == pid)
                 for pid in (0, 1)}
    assert rounds_of == {0: [1, 2], 1: [1, 2]}, rows


def test_warm_clientapp_servers_run_every_message_of_a_dp_run(tmp_path):
    """SuperNodes in `--isolation process` with a `fedmirasol clientapp-server` each: the run
    finishes, and every message a node received ran in a process forked from its server
    (no flwr-clientapp started per message)."""
    config_file = _run_toml(tmp_path)
    with Loopback(tmp_path, nodes=3, isolation="process") as link:
        _start_federation(link, tmp_path)
        run_id = link.run({"config-file": str(config_file)})
        link.wait_for(lambda: link.run_status(run_id).startswith("finished"), 2 * STEP,
                      "the run to finish")
        assert link.run_status(run_id) == "finished:completed", link.log("superlink")[-3000:]
        for i in range(3):
            received = link.log(f"node{i}").count("Receiving: ")
            forked = len(set(re.findall(r"ClientApp task (\d+) in process \d+",
                                        link.log(f"node{i}-clientapps"))))
            assert received >= 4 and forked == received, (i, received, forked)
            assert "exited with" not in link.log(f"node{i}-clientapps")
    metrics = rundir.read_metrics(_run_dir(tmp_path))
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert all(set(r["participants"]) == {0, 1, 2} for r in metrics[1:])
    assert _steps(tmp_path, 0, 2) > 0  # DP-SGD ran in the forked ClientApps
