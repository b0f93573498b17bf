"""The ClientApp's message handlers: decode a Flower message, run the task, encode the reply.

Wire protocol (keys of the RecordDict):

- server -> client: ``arrays`` (the global shared parameters; under ``compression.downlink``
  a change of the client's replica of them, with a ``downlink`` record: see
  `fedmirasol.compression.downlink`), ``config`` (``server-round``,
  ``fedmirasol-config`` = the run config as JSON, ``proximal-mu`` under FedProx,
  ``client-state-dir`` where a simulation mirrors client state for resuming, ``run-name``
  the run directory's name). A deployed node's own ``state-dir`` (node config) takes
  precedence over ``client-state-dir``; its other site settings override the run config on
  that node (`fedmirasol.client.site`).
- client -> server after training: ``arrays`` (the update: shared-parameter deltas, float32;
  under ``compression.codec`` the codec's packed payload, `fedmirasol.compression.codec`)
  and ``metrics`` (``num-examples``, ``partition-id``, train losses; under DP only the
  ``dp-*`` figures of `fedmirasol.privacy.client_round`: bookkeeping and noised sums). A
  client whose DP budget is exhausted replies with ``metrics`` only (``dp-budget-exhausted``
  = 1) and no ``arrays``.
- client -> server after evaluation: ``metrics`` (``num-examples``, ``partition-id``,
  ``val-loss``, ``val-accuracy``; under DP noised sums, or nothing: `fedmirasol.client.release`).

Before anything reads the site's data, the run's privacy request is checked against the
site's own policy (node config ``privacy.*``); a weaker request is refused by name.

Under homomorphic encryption the server's ``arrays`` may be its encrypted global state and the
update leaves encrypted: an `Opener` (`fedmirasol.client.he`) turns the message into the
global model and the way the update is sealed.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from flwr.app import ConfigRecord, Context, Message

from fedmirasol.client import state as client_state
from fedmirasol.client import task as client_task
from fedmirasol.client.compression import open_global, update_seal
from fedmirasol.client.release import (
    Seal, release_evaluate, release_partition, release_train,
)
from fedmirasol.client.site import apply_site, site_root, state_dir
from fedmirasol.config import RunConfig, from_json
from fedmirasol.core.parameters import NumpyState
from fedmirasol.core.wire import CONFIG_KEY, RUN_NAME_KEY, STATE_DIR_KEY
from fedmirasol.privacy.site_policy import check_request

if TYPE_CHECKING:
    from fedmirasol.privacy.release_log import ReleaseLog


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
    """Read this client's state as of the end of round `server_round` - 1 from its state
    directory into `context.state` (nothing when it has none, or the state is in memory)."""
    directory = _state_dir(context, record)
    if directory:
        client_state.restore_from_disk(context.state, directory, pid, server_round - 1)


@contextlib.contextmanager
def state_loaded(context: Context, record: ConfigRecord, pid: int,
                 server_round: int) -> Iterator[str]:
    """This client's state in `context.state` for one message (`restore_state`), dropped from
    memory afterwards when it has a state directory (yielded; '' when none), which stays its
    home between messages: the engine then keeps no client's arrays between rounds."""
    directory = _state_dir(context, record)
    restore_state(context, record, pid, server_round)
    try:
        yield directory
    finally:
        if directory:
            client_state.evict(context.state)


def run_name(record: ConfigRecord) -> str:
    return str(record.get(RUN_NAME_KEY, "")) or "run"


def privacy_log(context: Context, record: ConfigRecord, pid: int,
                config: RunConfig) -> "ReleaseLog | None":
    """Under DP, the site's release log of its dataset: in the node's own state-dir (one log
    per dataset over all runs), else in the simulation's client-state folder, else in
    ``context.state``."""
    if not config.privacy.enabled:
        return None
    from fedmirasol.privacy.release_log import ReleaseLog  # Opacus: only under DP

    name = f"{config.site_privacy.dataset_id}.jsonl"
    root = site_root(context.node_config)
    if root:
        return ReleaseLog.on_disk(Path(root) / "privacy" / name)
    if record.get(STATE_DIR_KEY):
        return ReleaseLog.on_disk(Path(str(record[STATE_DIR_KEY])) / "privacy"
                                  / f"client-{pid:05d}" / name)
    return ReleaseLog.in_state(context.state)


@dataclass(frozen=True)
class Opened:
    """What a message's ``arrays`` give a client: the global model, and how its update leaves
    (None: in the clear)."""

    global_shared: NumpyState
    seal: Seal | None = None


Opener = Callable[[Message, Context, RunConfig], Opened]


def plain_global(message: Message, context: Context, config: RunConfig) -> Opened:
    """The global model the message carries in the clear (through the client's replica under
    ``compression.downlink``); the update leaves as the run's codec encodes it."""
    return Opened(open_global(message, context, config))


def handle_train(message: Message, context: Context, opener: Opener = plain_global) -> Message:
    config, record = run_config(message, context)
    pid = partition_id(context, config)
    check_request(config.privacy, config.site_privacy)  # before the site's data is read
    server_round = int(record["server-round"])
    with state_loaded(context, record, pid, server_round) as directory:
        opened = opener(message, context, config)
        result = client_task.train(config, pid, server_round, opened.global_shared,
                                   context.state,
                                   proximal_mu=float(record.get("proximal-mu", 0.0)),
                                   privacy_log=privacy_log(context, record, pid, config),
                                   run=run_name(record))
        reply = release_train(message, config, pid, result.num_examples, result.update,
                              result.metrics,
                              seal=opened.seal or update_seal(config, context.state, pid,
                                                              server_round))
        if directory:  # after the release: a compressed update's residual is in the state now
            client_state.mirror_to_disk(context.state, directory, pid, server_round,
                                        keep_from=server_round - config.output.checkpoint_every)
    return reply


def handle_evaluate(message: Message, context: Context, opener: Opener = plain_global
                    ) -> Message:
    config, record = run_config(message, context)
    pid = partition_id(context, config)
    check_request(config.privacy, config.site_privacy)
    server_round = int(record["server-round"])
    # The state as of this round's training (that of a node restarted since it trained too).
    with state_loaded(context, record, pid, server_round + 1):
        global_shared = opener(message, context, config).global_shared
        metrics = client_task.evaluate_local(
            config, pid, global_shared, context.state,
            privacy_log=privacy_log(context, record, pid, config), run=run_name(record),
            server_round=server_round)
    return release_evaluate(message, config, pid, metrics)


def handle_query(message: Message, context: Context) -> Message:
    """Answer which partition this node holds (the server orders nodes by it)."""
    config, _ = run_config(message, context)
    return release_partition(message, partition_id(context, config))
