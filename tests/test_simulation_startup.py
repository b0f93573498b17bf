"""What a simulation's start and rounds cost beyond training: the ClientApp reaches Ray's
virtual-client processes without the server's stack, Flower's engine is imported while Ray
starts, and a round's bytes on the wire are counted without serializing the global model
once a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import ray.cloudpickle
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import load_config
from fedmirasol.core.metrics import Traffic, wire_bytes
from fedmirasol.core.parameters import to_record
from fedmirasol.engines import simulation
from fedmirasol.engines.apps import build_client_app
from fedmirasol.engines.client_server_step import DeferredServerStep
from fedmirasol.server.aggregators.he_step import ServerStepOnClients

ROOT = Path(__file__).resolve().parents[1]


def test_the_client_app_unpickles_without_the_servers_stack(tmp_path: Path) -> None:
    """Flower's Ray backend sends every virtual client the ClientApp (Ray's cloudpickle);
    loading it imports the client's stack only: not the server's aggregators and not Opacus
    (seconds of imports in each client process before its first message)."""
    app = build_client_app(node_defaults={"privacy.min-epsilon": 1.0})
    blob = tmp_path / "app.pickle"
    blob.write_bytes(ray.cloudpickle.dumps(lambda: app))  # as Flower's start_vce wraps it
    probe = ("import sys, ray.cloudpickle; app = ray.cloudpickle.loads(open(sys.argv[1], 'rb')"
             ".read())(); print(type(app).__name__, sorted(m for m in sys.modules if "
             "m == 'opacus' or m.startswith('fedmirasol.server')))")
    done = subprocess.run([sys.executable, "-c", probe, str(blob)], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ClientApp", "[]"], done.stdout


def test_a_run_without_dp_starts_without_importing_opacus() -> None:
    """The server's side of a simulation (engine, ServerApp, round loop, aggregators) imports
    Opacus only where a run uses DP (its accountants take about a second to import)."""
    probe = ("import sys; import fedmirasol.engines.simulation, fedmirasol.engines.apps, "
             "fedmirasol.server.loop, fedmirasol.server.aggregators; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opacus'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"], done.stdout


def test_the_deferred_server_step_steps_as_the_server_step() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = load_config(None, ["strategy.name='fedadam'"])
    rng = np.random.default_rng(0)
    model = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    update = {"w": (rng.normal(size=(3, 2)) * 0.1).astype(np.float32)}
    deferred, server = DeferredServerStep(), ServerStepOnClients()
    state = deferred.initial_state(config, model)
    expected_state = server.initial_state(config, model)
    assert state.keys() == expected_state.keys()
    layout, values = deferred.segments(config, model, state, update)
    expected_layout, expected_values = server.segments(config, model, expected_state, update)
    assert layout == expected_layout
    for name, segment in expected_values.items():
        for key, array in segment.items():
            np.testing.assert_array_equal(values[name][key], array)
    new, _ = deferred.step(config, 2, layout, values)
    expected, _ = server.step(config, 2, expected_layout, expected_values)
    np.testing.assert_array_equal(new["w"], expected["w"])


def test_flowers_engine_is_imported_while_the_body_runs_and_a_failure_is_left_alone(
        monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    with simulation._importing_meanwhile("json.tool"):
        pass
    assert "json.tool" in sys.modules
    with simulation._importing_meanwhile("fedmirasol.no_such_module"):  # no error here
        pass
    assert "fedmirasol.no_such_module" not in sys.modules


def test_a_rounds_traffic_counts_each_message_in_full_though_they_share_the_model() -> None:
    """The round's messages share one ArrayRecord (the global model): every message is still
    charged all its bytes, exactly as Flower serializes it."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    rng = np.random.default_rng(1)
    arrays = to_record({"a": rng.normal(size=(40, 30)).astype(np.float32),
                        "b": np.zeros(7, np.float32)})
    messages = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"round": n})}),
                        dst_node_id=node, message_type="train") for n, node in ((1, 5), (1, 6))]
    replies = [Message(RecordDict({"arrays": to_record({"a": rng.normal(size=(40, 30))}),
                                   "metrics": MetricRecord({"num-examples": 3})}),
                       dst_node_id=0, message_type="train") for _ in range(2)]
    for reply, node in zip(replies, (5, 6)):
        reply.metadata.__dict__["_src_node_id"] = node
    traffic = Traffic()
    traffic.count(messages, replies)
    arriving = Traffic()  # counted as the replies arrive, the messages afterwards
    count = arriving.counting(messages)
    for reply in replies:
        count.reply(reply)
    count.finish()
    assert arriving == traffic

    def serialized(message: Message) -> int:
        return sum(len(part.deflate()) for part in get_all_nested_objects(message).values())

    assert dict(traffic.down) == {5: serialized(messages[0]), 6: serialized(messages[1])}
    assert dict(traffic.up) == {5: serialized(replies[0]), 6: serialized(replies[1])}
    assert traffic.down[5] > arrays["a"].numpy().nbytes  # the model is in each message
    assert all(wire_bytes(m) == serialized(m) for m in messages + replies)
