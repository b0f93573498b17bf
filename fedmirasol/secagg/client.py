"""The ClientApp's secure-aggregation stage handlers (see `protocol` for the stages).

A client's secrets for the round (private keys, self-mask seed, the shares it holds) live in
its node state (`context.state`) between stages and are dropped after unmasking. Training runs
through the app's ordinary train handler, so DP-SGD, client-level clipping (before masking),
FedProx and FedBN's local layers apply exactly as without secure aggregation; only the
update it would have sent is quantized and masked instead.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmirasol.core.seeds import seed_for
from fedmirasol.core.parameters import from_record, to_record
from fedmirasol.secagg import keys
from fedmirasol.secagg.masking import apply_mask
from fedmirasol.secagg.protocol import (
    KEYS,
    MASK,
    MASKED,
    RECORD,
    SHARES,
    TRAIN,
    UNMASK,
    VECTOR,
    action,
)
from fedmirasol.secagg.quantization import Quantizer, measured_bound

STATE = "secagg-client"
UPDATE = "secagg-update"
WEIGHT_KEY = "num-examples"
ROUNDING_STREAM = 7  # seeds stochastic rounding apart from the training streams


def _reply(message: Message, **records: Any) -> Message:
    return Message(content=RecordDict(records), reply_to=message)


def _stage_record(message: Message) -> ConfigRecord:
    record = message.content.config_records.get(RECORD)
    if record is None:
        raise ValueError(f"secure-aggregation message without its {RECORD!r} record")
    return record


def _state(context: Context, record: ConfigRecord) -> ConfigRecord:
    state = context.state.config_records.get(STATE)
    if state is None or state["round"] != record["round"]:
        raise RuntimeError(f"no secure-aggregation keys for round {record['round']!r} on this "
                           "node (it missed an earlier stage)")
    return state


def handle_keys(message: Message, context: Context) -> Message:
    """Stage 1: fresh key pairs and self-mask seed; reply with the public keys and a
    commitment to the seed (its SHA-256), so a wrongly rebuilt seed is caught."""
    record = _stage_record(message)
    mask_private, mask_public = keys.new_key_pair()
    enc_private, enc_public = keys.new_key_pair()
    seed = keys.new_seed()
    context.state[STATE] = ConfigRecord({"round": record["round"], "sk-mask": mask_private,
                                         "sk-enc": enc_private, "seed": seed})
    if UPDATE in context.state:
        del context.state[UPDATE]
    return _reply(message, **{RECORD: ConfigRecord({
        "pk-mask": mask_public, "pk-enc": enc_public,
        "seed-commitment": keys.seed_commitment(seed)})})


def handle_shares(message: Message, context: Context) -> Message:
    """Stage 2: Shamir-share the self-mask seed and the mask key among this node's group
    (itself and its neighbours), each share encrypted for its holder."""
    record = _stage_record(message)
    state = _state(context, record)
    me = message.metadata.dst_node_id
    nodes = [int(n) for n in record["nodes"]]
    if me not in nodes or len(set(nodes)) != len(nodes):
        raise ValueError("the participant list must name this node once and no node twice")
    enc_keys = dict(zip(nodes, record["pk-enc"]))
    group = sorted(keys.neighbours(me, nodes, int(record["num-neighbours"])) + [me])
    threshold = int(record["threshold"])
    if not len(group) // 2 < threshold <= len(group):
        raise ValueError(f"threshold {threshold} must be a majority of the {len(group)} "
                         "share holders")
    seed_shares = keys.split_secret(state["seed"], threshold, group)
    key_shares = keys.split_secret(state["sk-mask"], threshold, group)
    sealed = [keys.seal_shares(state["sk-enc"], enc_keys[dst], me, dst, seed_shares[dst],
                               key_shares[dst]) for dst in group]
    state.update({"nodes": nodes, "pk-mask": list(record["pk-mask"]),
                  "pk-enc": list(record["pk-enc"]), "threshold": threshold, "group": group})
    return _reply(message, **{RECORD: ConfigRecord({"dst": group, "ciphertexts": sealed})})


def _receive_shares(message: Message, state: ConfigRecord, record: ConfigRecord) -> None:
    """Decrypt and keep the shares the server forwards (their senders are the peers)."""
    me = message.metadata.dst_node_id
    enc_keys = dict(zip(state["nodes"], state["pk-enc"]))
    group = set(state["group"])
    senders = [int(s) for s in record["src"]]
    if me not in senders or not set(senders) <= group:
        raise ValueError("forwarded shares must include this node's own and come only from "
                         "its neighbours")
    opened = [keys.open_shares(state["sk-enc"], enc_keys[src], src, me, ct)
              for src, ct in zip(senders, record["ciphertexts"])]
    state.update({"held-src": senders, "held-seed": [o[0] for o in opened],
                  "held-key": [o[1] for o in opened]})


TrainFn = Callable[[Message, Context], Message]  # the app's train handler
RunSeedFn = Callable[[Message], int]  # the run's seed, from the config a message carries


def _rounding_seed(message: Message, metrics: Mapping[str, Any], run_seed: RunSeedFn) -> int:
    """Stochastic rounding seeded by (run seed, round, partition): a resumed run repeats."""
    record = message.content.config_records.get("config", {})
    return seed_for(run_seed(message), int(record.get("server-round", 0)),
                    int(metrics.get("partition-id", 0)), ROUNDING_STREAM)


def _train(message: Message, context: Context, train: TrainFn, run_seed: RunSeedFn
           ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any], int]:
    """Run the app's train handler: (update or None, its metrics, the rounding seed)."""
    reply = train(message, context)
    metrics = dict(reply.content.metric_records["metrics"])
    arrays = reply.content.array_records.get("arrays")
    update = from_record(arrays) if arrays is not None else None
    return update, metrics, _rounding_seed(message, metrics, run_seed)


def handle_train(message: Message, context: Context, train: TrainFn,
                 run_seed: RunSeedFn) -> Message:
    """Stage 3 (measured range only): train, keep the update, reply with its coarse bound."""
    record = _stage_record(message)
    state = _state(context, record)
    _receive_shares(message, state, record)
    update, metrics, seed = _train(message, context, train, run_seed)
    largest = max((float(np.max(np.abs(v))) for v in (update or {}).values() if v.size),
                  default=0.0)
    state["rounding-seed"] = seed
    context.state[UPDATE] = to_record(update) if update is not None else ArrayRecord()
    context.state["secagg-metrics"] = MetricRecord(metrics)
    return _reply(message, metrics=MetricRecord(metrics),
                  **{RECORD: ConfigRecord({"bound": measured_bound(largest)})})


def _mask(update: dict[str, np.ndarray] | None, weight: int, state: ConfigRecord,
          record: ConfigRecord, me: int) -> np.ndarray:
    """The masked vector: quantized weighted update, weight, self mask, pairwise masks.

    A client with no update (its DP budget is exhausted: it trained nothing) masks zeros with
    weight zero: it adds nothing to the sum, yet its masks cancel, so it is no dropout.
    """
    spec_size = int(record["size"])
    vector = np.zeros(spec_size + 1, np.uint32)
    if update is not None:
        quantizer = Quantizer(float(record["bound"]), int(record["bits"]))
        quantizer.encode(list(update.values()), weight, vector[:spec_size],
                         np.random.default_rng(int(state["rounding-seed"])))
    vector[spec_size] = weight if update is not None else 0
    apply_mask(vector, state["seed"])
    mask_keys = dict(zip(state["nodes"], state["pk-mask"]))
    for peer in state["held-src"]:
        if peer != me:
            seed = keys.pairwise_seed(state["sk-mask"], mask_keys[peer])
            apply_mask(vector, seed, 1 if me < peer else -1)
    return vector


def handle_mask(message: Message, context: Context, train: TrainFn,
                run_seed: RunSeedFn) -> Message:
    """Stage 4: quantize and mask the update (training first unless stage 3 did)."""
    record = _stage_record(message)
    state = _state(context, record)
    if "src" in record:  # shares not yet delivered: train now (the bound is known)
        _receive_shares(message, state, record)
        update, metrics, state["rounding-seed"] = _train(message, context, train, run_seed)
    else:
        stored = context.state.array_records.get(UPDATE)
        if stored is None:
            raise RuntimeError("no trained update kept for masking (the train stage was missed)")
        update = from_record(stored) or None
        metrics = dict(context.state.metric_records["secagg-metrics"])
        del context.state[UPDATE]
    me = message.metadata.dst_node_id
    weight = int(metrics[WEIGHT_KEY]) if record["weighting"] == "examples" else 1
    if update is not None and set(update) != set(record["names"]):
        raise ValueError("the update's parameters differ from the ones the server aggregates")
    if update is not None:
        update = {name: update[name] for name in record["names"]}
    vector = _mask(update, weight, state, record, me)
    del update
    return _reply(message, metrics=MetricRecord(metrics),
                  **{MASKED: ArrayRecord({VECTOR: Array(vector)})})


def handle_unmask(message: Message, context: Context) -> Message:
    """Stage 5: reveal seed shares of survivors and key shares of dropouts, never both."""
    record = _stage_record(message)
    state = _state(context, record)
    me = message.metadata.dst_node_id
    active, dropped = {int(n) for n in record["active"]}, {int(n) for n in record["dropped"]}
    if active & dropped:
        raise ValueError("the server named nodes both surviving and dropped; refusing to unmask")
    if me not in active:
        raise ValueError("this node is not among the survivors; refusing to unmask")
    if len(active) < int(state["threshold"]):
        raise ValueError(f"only {len(active)} survivors, fewer than the threshold "
                         f"{state['threshold']}; refusing to unmask")
    nodes, shares = [], []
    for src, seed_share, key_share in zip(state["held-src"], state["held-seed"],
                                          state["held-key"]):
        if src in active or src in dropped:
            nodes.append(src)
            shares.append(seed_share if src in active else key_share)
    del context.state[STATE]
    return _reply(message, **{RECORD: ConfigRecord({"nodes": nodes, "shares": shares})})


def register(app: ClientApp, train: TrainFn, run_seed: RunSeedFn) -> None:
    """Register the stage handlers on a ClientApp (message types in `protocol`); `train`
    is the app's train handler whose update gets masked, `run_seed` reads the run's seed from
    a message (the client package provides both: secure aggregation does not depend on it)."""
    app.query(action(KEYS))(handle_keys)
    app.query(action(SHARES))(handle_shares)
    app.train(action(TRAIN))(functools.partial(handle_train, train=train, run_seed=run_seed))
    app.train(action(MASK))(functools.partial(handle_mask, train=train, run_seed=run_seed))
    app.query(action(UNMASK))(handle_unmask)
