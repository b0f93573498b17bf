"""What the secure-aggregation stages need from this client (`fedmirasol.secagg.client`):
its train and evaluate handlers, its site's rules, its long-term identity, and whether it has anything to
contribute this round.

The identity is the site's SuperNode key and the registry of keys it trusts, named in its node
config (``secagg-key`` = the private key `fedmirasol certs` wrote, ``secagg-registry`` = the
registered public keys); a simulation harness provisions them instead (`build_client_app(
identities=...)`, one per partition). The site's rules are the run config's ``[secagg]`` with
its node config's ``secagg.min-contributors`` / ``secagg.reconstruction-fraction`` applied.
"""

from __future__ import annotations

import functools
from typing import Sequence

from flwr.app import Context, Message

from fedmirasol.client import task as client_task
from fedmirasol.client.handlers import (
    handle_evaluate, handle_train, partition_id, privacy_log, run_config, run_name, run_seed,
)
from fedmirasol.client.mods import with_train_mods
from fedmirasol.client.release import release_exhausted
from fedmirasol.config.secagg import SecAggConfig
from fedmirasol.secagg.client import ClientHooks
from fedmirasol.secagg.identity import Identity, load_identity

KEY_NODE_KEY, REGISTRY_NODE_KEY = "secagg-key", "secagg-registry"


@functools.lru_cache(maxsize=8)
def _site_identity(key_path: str, registry_path: str) -> Identity:
    return load_identity(key_path, registry_path)


def _identity(provisioned: Sequence[Identity] | None, message: Message,
              context: Context) -> Identity:
    node = context.node_config
    if KEY_NODE_KEY in node or REGISTRY_NODE_KEY in node:
        if not (KEY_NODE_KEY in node and REGISTRY_NODE_KEY in node):
            raise ValueError(f"node config needs both {KEY_NODE_KEY!r} and "
                             f"{REGISTRY_NODE_KEY!r} for secure aggregation")
        return _site_identity(str(node[KEY_NODE_KEY]), str(node[REGISTRY_NODE_KEY]))
    if provisioned is None:
        raise ValueError(f"secure aggregation needs this node's long-term key: start the "
                         f"SuperNode with --node-config '{KEY_NODE_KEY}=\"node-0\" "
                         f"{REGISTRY_NODE_KEY}=\"registry.pub\"' (files of `fedmirasol certs`)")
    pid = int(node.get("partition-id", -1))
    if not 0 <= pid < len(provisioned):
        raise ValueError(f"no provisioned identity for partition-id {pid}")
    return provisioned[pid]


def _settings(message: Message, context: Context) -> SecAggConfig:
    return run_config(message, context)[0].secagg


def _nothing_to_contribute(message: Message, context: Context) -> Message | None:
    """The public "budget exhausted" reply when this client's next DP round would pass its
    budget (it will train nothing), else None."""
    config, record = run_config(message, context)
    pid = partition_id(context, config)
    server_round = int(record.get("server-round", 1))
    # Only the site's release log decides this (the local parameters are not read).
    spent = client_task.exhausted_bookkeeping(config, pid, context.state,
                                              privacy_log(context, record, pid, config),
                                              run_name(record), server_round)
    return None if spent is None else release_exhausted(message, pid, spent)


def secure_hooks(identities: Sequence[Identity] | None = None) -> ClientHooks:
    """The hooks of this client package (`identities`: a simulation's provisioned keys, by
    partition id; None: each node's own, from its node config)."""
    return ClientHooks(train=with_train_mods(handle_train), evaluate=handle_evaluate,
                       run_seed=run_seed, settings=_settings,
                       identity=functools.partial(_identity, identities),
                       nothing_to_contribute=_nothing_to_contribute)
