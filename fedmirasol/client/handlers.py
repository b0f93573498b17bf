"""The ClientApp's message handlers: decode a Flower message, run the task, encode the reply.

Wire protocol (keys of the RecordDict):

- server -> client: ``arrays`` (the global shared parameters), ``config`` (``server-round``,
  ``fedmirasol-config`` = the run config as JSON, ``proximal-mu`` under FedProx,
  ``client-state-dir`` where a simulation mirrors client state for resuming, ``run-name``
  the run directory's name). A deployed node's own ``state-dir`` (node config) takes
  precedence over ``client-state-dir``; its other site settings override the run config on
  that node (`fedmirasol.client.site`).
- client -> server after training: ``arrays`` (the update: shared-parameter deltas, float32)
  and ``metrics`` (``num-examples``, ``partition-id``, train losses; under DP the ``dp-*``
  figures of `fedmirasol.privacy.client_round`). A client whose DP budget is exhausted replies
  with ``metrics`` only (``dp-budget-exhausted`` = 1) and no ``arrays``.
- client -> server after evaluation: ``metrics`` (``num-examples``, ``partition-id``,
  ``val-loss``, ``val-accuracy``).
"""

from __future__ import annotations

import functools

from flwr.app import ConfigRecord, Context, Message

from fedmirasol.client import state as client_state
from fedmirasol.client import task as client_task
from fedmirasol.client.release import release_evaluate, release_partition, release_train
from fedmirasol.client.site import apply_site, state_dir
from fedmirasol.config import RunConfig, from_json
from fedmirasol.core.parameters import from_record
from fedmirasol.core.wire import CONFIG_KEY, RUN_NAME_KEY, STATE_DIR_KEY


def partition_id(context: Context, config: RunConfig) -> int:
    """This node's partition, checked against the run config."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config has no 'partition-id' (start the SuperNode with "
                         "--node-config \"partition-id=N num-partitions=M\")")
    pid = int(node["partition-id"])
    expected = config.data.num_clients
    if "num-partitions" in node and int(node["num-partitions"]) != expected:
        raise ValueError(f"this federation has {node['num-partitions']} nodes but the run "
                         f"config's data.num-clients is {expected}; make them equal")
    if not 0 <= pid < expected:
        raise ValueError(f"partition-id {pid} is outside data.num-clients = {expected}")
    return pid


@functools.lru_cache(maxsize=2)
def _parsed(text: str) -> RunConfig:
    return from_json(text)


def run_config(message: Message, context: Context | None = None
               ) -> tuple[RunConfig, ConfigRecord]:
    """The run config a message carries, with this node's site settings when `context`."""
    record = message.content.config_records.get("config")
    if record is None or CONFIG_KEY not in record:
        raise ValueError(f"the server's message carries no '{CONFIG_KEY}'")
    config = _parsed(str(record[CONFIG_KEY]))
    return (apply_site(config, context.node_config) if context else config), record


def run_seed(message: Message) -> int:
    """The run's seed, from the config the message carries (0 when it carries none)."""
    record = message.content.config_records.get("config", {})
    return run_config(message)[0].seed if CONFIG_KEY in record else 0


def _state_dir(context: Context, record: ConfigRecord) -> str:
    """Where this client mirrors its state: the node's own `state-dir` (a deployed site,
    one folder per run), else the server's `client-state-dir` (a simulation), else none."""
    own = state_dir(context.node_config, str(record.get(RUN_NAME_KEY, "")))
    return own or str(record.get(STATE_DIR_KEY, ""))


def restore_state(context: Context, record: ConfigRecord, pid: int, server_round: int) -> None:
    directory = _state_dir(context, record)
    if directory:
        client_state.restore_from_disk(context.state, directory, pid, server_round - 1)


def handle_train(message: Message, context: Context) -> Message:
    config, record = run_config(message, context)
    pid = partition_id(context, config)
    server_round = int(record["server-round"])
    restore_state(context, record, pid, server_round)
    global_shared = from_record(message.content.array_records["arrays"])
    result = client_task.train(config, pid, server_round, global_shared, context.state,
                               proximal_mu=float(record.get("proximal-mu", 0.0)))
    directory = _state_dir(context, record)
    if directory:
        client_state.mirror_to_disk(context.state, directory, pid, server_round)
    return release_train(message, config, pid, result.num_examples, result.update,
                         result.metrics)


def handle_evaluate(message: Message, context: Context) -> Message:
    config, record = run_config(message, context)
    pid = partition_id(context, config)
    # A node restarted since it trained this round evaluates with that round's state.
    restore_state(context, record, pid, int(record["server-round"]) + 1)
    global_shared = from_record(message.content.array_records["arrays"])
    return release_evaluate(message, config, pid,
                            client_task.evaluate_local(config, pid, global_shared, context.state))


def handle_query(message: Message, context: Context) -> Message:
    """Answer which partition this node holds (the server orders nodes by it)."""
    config, _ = run_config(message, context)
    return release_partition(message, partition_id(context, config))
