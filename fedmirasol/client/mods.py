"""Flower client mods: behaviour that wraps every task instead of living inside one.

`node_defaults` gives simulated nodes their site settings (a deployed site's node config).
`fault_injection` makes chosen clients fail the way real ones do, for robustness experiments
(`faults.*` keys): crash during training, answer too late, or send a NaN update. The mods a run
uses come from `client_mods()`, which the ClientApp is built with.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmirasol.client.handlers import partition_id, run_config
from fedmirasol.core.parameters import from_record, to_record


class InjectedFault(RuntimeError):
    """Raised by a client listed in `faults.crash-clients`."""


def fault_injection(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The mod: `faults.*` on plain train messages (the secure-aggregation stages train
    through `with_faults(handle_train)` instead, once per round)."""
    if message.metadata.message_type != "train":
        return call_next(message, context)
    return inject_faults(message, context, call_next)


def with_faults(train: ClientAppCallable) -> ClientAppCallable:
    """`train` with `faults.*` applied, for callers that run it outside the mod chain."""
    return lambda message, context: inject_faults(message, context, train)


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
    if pid in faults.clients("nan") and "arrays" in reply.content.array_records:
        update = from_record(reply.content.array_records["arrays"])
        # the first float array (a compressed update's scales or values)
        first = next(name for name, values in update.items() if values.dtype.kind == "f")
        update[first] = np.full_like(update[first], math.nan)
        reply.content["arrays"] = to_record(update)
    return reply


def node_defaults(defaults: Mapping[str, Any]) -> Mod:
    """A mod that gives every node the node-config keys it does not set itself: how a
    simulation harness provisions its virtual clients' site settings (a deployed SuperNode
    sets them with --node-config)."""
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        for key, value in defaults.items():
            context.node_config.setdefault(key, value)
        return call_next(message, context)

    return mod


def client_mods(defaults: Mapping[str, Any] | None = None) -> list[Mod]:
    """The mods of fedmirasol's ClientApp, outermost first (`defaults`: node-config keys every
    node gets unless it sets them, see `node_defaults`)."""
    return ([node_defaults(defaults)] if defaults else []) + [fault_injection]


