"""Flower client mods: behaviour that wraps every task instead of living inside one.

`node_defaults` gives simulated nodes their site settings (a deployed site's node config).
Two mods act on training, outermost first (`TRAIN_MODS`):

- `inject_faults` makes chosen clients fail the way real ones do (`faults.*`): crash during
  training, answer too late, or send a NaN update;
- `attack` makes the attackers (`attack.*`) send a Byzantine update in place of the one the
  release point produced (`fedmirasol.client.attacks`): a malicious client rewrites its own
  reply, so its update escapes `defense.norm-bound`, which honest clients apply at release.

`client_mods()` gives them to the ClientApp for plain train messages; the secure-aggregation
stages train once per round through `with_train_mods(handle_train)` instead.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmirasol.client import task as client_task
from fedmirasol.client.attacks import UPDATE_ATTACKS, AttackRound
from fedmirasol.client.handlers import partition_id, run_config
from fedmirasol.config.run import RunConfig
from fedmirasol.core.packing import is_packed, pack, unpack
from fedmirasol.core.parameters import NumpyState, from_record, to_record


class InjectedFault(RuntimeError):
    """Raised by a client listed in `faults.crash-clients`."""


def _update(reply: Message) -> NumpyState | None:
    """The update a train reply carries (None: an error, or no update, e.g. DP budget spent)."""
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return None
    return from_record(reply.content.array_records["arrays"])


def inject_faults(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply `faults.*` for the listed clients around `call_next`; others pass untouched."""
    config, _ = run_config(message, context)
    faults = config.faults
    if not (faults.crash_clients or faults.slow_clients or faults.nan_clients):
        return call_next(message, context)
    pid = partition_id(context, config)
    if pid in faults.clients("crash"):
        raise InjectedFault(f"client {pid} crashed on purpose (faults.crash-clients)")
    if pid in faults.clients("slow"):
        time.sleep(faults.slow_seconds)
    reply = call_next(message, context)
    update = _update(reply) if pid in faults.clients("nan") else None
    if update:
        # the first float array (a compressed update's scales or values)
        first = next(name for name, values in update.items() if values.dtype.kind == "f")
        update[first] = np.full_like(update[first], math.nan)
        reply.content["arrays"] = to_record(update)
    return reply


def _colluders(config: RunConfig, pid: int, server_round: int, global_shared: NumpyState,
               own: NumpyState) -> Callable[[], list[NumpyState]]:
    """The colluding attackers' benign updates, `pid`'s own first. The others are recomputed
    from the run config (their seeded training on their data, from a fresh client state), as
    every attacker of a simulation can; `attack.kind = little-is-enough` is refused where the
    data is each site's own."""
    def benign() -> list[NumpyState]:
        others = sorted(config.attack.attackers(config.data.num_clients, config.seed) - {pid})
        results = (client_task.train(config, other, server_round, global_shared, RecordDict())
                   for other in others)
        return [own, *(result.update for result in results if result.update is not None)]

    return benign


def attack(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """An attacker's train reply carries `attack.kind`'s update instead of the one it trained
    (from `attack.from-round` on); honest clients pass untouched."""
    config, record = run_config(message, context)
    settings = config.attack
    if not settings.enabled:
        return call_next(message, context)
    pid, server_round = partition_id(context, config), int(record["server-round"])
    if not settings.attacks(pid, server_round, config.data.num_clients, config.seed):
        return call_next(message, context)
    reply = call_next(message, context)
    update = _update(reply)
    if update is None:
        return reply
    global_shared = from_record(message.content.array_records["arrays"])
    poisoned = UPDATE_ATTACKS[settings.kind](AttackRound(
        config, pid, server_round, update,
        _colluders(config, pid, server_round, global_shared, update)))
    reply.content["arrays"] = to_record(poisoned)
    return reply


TRAIN_MODS: tuple[Mod, ...] = (inject_faults, attack)  # outermost first


def _on_train(mod: Mod) -> Mod:
    """`mod` for train messages; every other message passes untouched."""
    def on_train(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message.metadata.message_type != "train":
            return call_next(message, context)
        return mod(message, context, call_next)

    on_train.__name__ = mod.__name__
    return on_train


def with_train_mods(train: ClientAppCallable) -> ClientAppCallable:
    """`train` wrapped in `TRAIN_MODS`, for callers that run it outside the mod chain (the
    secure-aggregation stages)."""
    for mod in reversed(TRAIN_MODS):
        train = functools.partial(_around, mod, train)
    return train


def _around(mod: Mod, inner: ClientAppCallable, message: Message, context: Context) -> Message:
    return mod(message, context, inner)


def node_defaults(defaults: Mapping[str, Any]) -> Mod:
    """A mod that gives every node the node-config keys it does not set itself: how a
    simulation harness provisions its virtual clients' site settings (a deployed SuperNode
    sets them with --node-config)."""
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        for key, value in defaults.items():
            context.node_config.setdefault(key, value)
        return call_next(message, context)

    return mod


def packed_wire(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A message that came with its arrays packed (a deployment's server packs them,
    `fedmirasol.core.packing`) is unpacked for the ClientApp, and its reply packed the same
    way. Encoding only: the reply's values are the ones the ClientApp released."""
    if not message.has_content() or not is_packed(message.content):
        return call_next(message, context)
    message.content = unpack(message.content)  # PackingError: Flower replies with the error
    reply = call_next(message, context)
    if reply.has_content():
        reply.content = pack(reply.content)
    return reply


def client_mods(defaults: Mapping[str, Any] | None = None) -> list[Mod]:
    """The mods of fedmirasol's ClientApp, outermost first (`defaults`: node-config keys every
    node gets unless it sets them, see `node_defaults`)."""
    return [packed_wire, *([node_defaults(defaults)] if defaults else []),
            *[_on_train(mod) for mod in TRAIN_MODS]]
