"""The ClientApp's secure-aggregation stage handlers (see `protocol` for the stages).

A client's secrets for the round (private keys, self-mask seed, the shares it holds) live in
its node state (`context.state`) between stages and are dropped after unmasking. Training runs
through the app's ordinary train handler, so DP-SGD, client-level clipping, FedProx and FedBN's
local layers apply exactly as without secure aggregation; only the reply it would have sent is
replaced by the masked vector and the public bookkeeping.

An honest client assumes the server may lie. It refuses (its reply is an error and it reveals
nothing more) when: a peer's keys are not signed by a registered long-term key, or a key is
listed twice; its share group or the threshold is below what its site set
(`secagg.min-contributors`, `secagg.reconstruction-fraction`, read from the run config with the
site's node config applied); fewer than threshold peers' shares reach it before masking; the
sum field is too narrow for the round; the survivor set is too small, names it dropped, leaves
fewer than threshold of the peers it masked with, or is not signed, on exactly the set it
signed itself, by a majority of the share group of every client whose secret it would reveal.

Its weight (example count) is clipped to the round's bound before masking, and under
client-level DP its quantized update keeps the clip norm (`quantization`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmirasol.config.secagg import SecAggConfig, sum_field_bits
from fedmirasol.core.parameters import from_record
from fedmirasol.core.seeds import seed_for
from fedmirasol.errors import ConfigError
from fedmirasol.secagg import keys
from fedmirasol.secagg.identity import Identity, transcript, verify
from fedmirasol.secagg.masking import apply_mask
from fedmirasol.secagg.protocol import (
    CONSISTENCY, EVAL_MASK, EVALUATE, KEYS, MASK, MASKED, RECORD, SHARES, SIGNED_KEYS,
    SIGNED_SURVIVORS, SUMS, SUMS_STREAM, TRAIN, UNMASK, VECTOR, VECTOR_STREAM, action,
    signatures_needed,
)
from fedmirasol.secagg.quantization import Quantizer
from fedmirasol.secagg.sums import SumSpec

log = logging.getLogger("fedmirasol.secagg")
STATE = "secagg-client"
WEIGHT_KEY = "num-examples"
ROUNDING_STREAM = 7  # seeds stochastic rounding apart from the training streams

TrainFn = Callable[[Message, Context], Message]  # the app's train (or evaluate) handler
RunSeedFn = Callable[[Message], int]  # the run's seed, from the config a message carries
PUBLIC_METRICS = ("partition-id",)  # with the DP bookkeeping (`dp-*`): all a masked reply shows


class Refused(ValueError):
    """An honest client's refusal to go on with a round the server ran against the protocol."""


@dataclass(frozen=True)
class ClientHooks:
    """What secure aggregation needs from the client package (it does not import it)."""

    train: TrainFn  # the app's train handler: its update is what gets masked
    evaluate: TrainFn  # the app's evaluate handler: its figures are what gets summed
    run_seed: RunSeedFn
    settings: Callable[[Message, Context], SecAggConfig]  # the site's effective rules
    identity: Callable[[Message, Context], Identity]  # this node's long-term key and registry
    # the public "budget exhausted" reply of a client with nothing to contribute, else None
    nothing_to_contribute: Callable[[Message, Context], Message | None]


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


def _refuse(reason: str, context: Context) -> None:
    """Forget the round's secrets and refuse."""
    if STATE in context.state:
        del context.state[STATE]
    raise Refused(f"secure aggregation refused: {reason}")


def handle_keys(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 1: fresh key pairs and self-mask seed, signed with the node's long-term key; or,
    for training, the public "exhausted" reply of a client with nothing to contribute (no
    keys: it takes no part in the round, so it cannot pad the survivor count)."""
    record = _stage_record(message)
    if STATE in context.state:
        del context.state[STATE]
    purpose = str(record.get("purpose", TRAIN))
    if purpose not in (TRAIN, EVALUATE):
        raise ValueError(f"unknown secure-aggregation purpose {purpose!r}")
    if purpose == TRAIN:
        exhausted = hooks.nothing_to_contribute(message, context)
        if exhausted is not None:
            return exhausted
    identity = hooks.identity(message, context)
    me = message.metadata.dst_node_id
    mask_private, mask_public = keys.new_key_pair()
    enc_private, enc_public = keys.new_key_pair()
    seed = keys.new_seed()
    commitment = keys.seed_commitment(seed)
    context.state[STATE] = ConfigRecord({"round": record["round"], "purpose": purpose,
                                         "sk-mask": mask_private,
                                         "sk-enc": enc_private, "seed": seed,
                                         "pk-mask-own": mask_public, "pk-enc-own": enc_public})
    signature = identity.sign(transcript(SIGNED_KEYS, str(record["round"]), me, mask_public,
                                         enc_public, commitment))
    return _reply(message, **{RECORD: ConfigRecord({
        "pk-mask": mask_public, "pk-enc": enc_public, "seed-commitment": commitment,
        "identity": identity.public, "signature": signature})})


def _check_peers(record: ConfigRecord, state: ConfigRecord, identity: Identity, me: int,
                 group: Sequence[int], context: Context) -> None:
    """Every listed key bundle of the group is signed by a distinct registered identity, and
    this node's own bundle is the one it sent."""
    nodes = [int(n) for n in record["nodes"]]
    at = {node: i for i, node in enumerate(nodes)}
    identities = list(record["identities"])
    if len(set(identities)) != len(identities):
        _refuse("one long-term key is listed for two participants", context)
    mine = at[me]
    if (record["pk-mask"][mine], record["pk-enc"][mine], identities[mine]) != (
            state["pk-mask-own"], state["pk-enc-own"], identity.public):
        _refuse("the server changed this node's own keys", context)
    for node in group:
        i = at[node]
        if not identity.registered(identities[i]):
            _refuse(f"participant {node}'s long-term key is not in this site's registry",
                    context)
        signed = transcript(SIGNED_KEYS, str(record["round"]), node, record["pk-mask"][i],
                            record["pk-enc"][i], record["seed-commitments"][i])
        if not verify(identities[i], signed, record["signatures"][i]):
            _refuse(f"participant {node}'s keys are not signed by its long-term key", context)


def handle_shares(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 2: check the participants, then Shamir-share the self-mask seed and the mask key
    among this node's group (itself and its neighbours), each share encrypted for its holder."""
    record = _stage_record(message)
    state = _state(context, record)
    rules = hooks.settings(message, context)
    identity = hooks.identity(message, context)
    me = message.metadata.dst_node_id
    nodes = [int(n) for n in record["nodes"]]
    lists = ("pk-mask", "pk-enc", "seed-commitments", "identities", "signatures")
    if me not in nodes or len(set(nodes)) != len(nodes) or any(
            len(record[key]) != len(nodes) for key in lists):
        raise ValueError("the participant list must name this node once and no node twice, "
                         "with one key bundle each")
    group = sorted(keys.neighbours(me, nodes, int(record["num-neighbours"])) + [me])
    threshold = int(record["threshold"])
    if len(group) < rules.min_contributors:
        _refuse(f"a share group of {len(group)} is below secagg.min-contributors = "
                f"{rules.min_contributors}", context)
    if not max(rules.threshold(len(group)), len(group) // 2 + 1) <= threshold <= len(group):
        _refuse(f"threshold {threshold} for a group of {len(group)} is below this site's "
                f"{rules.threshold(len(group))} (secagg.reconstruction-fraction = "
                f"{rules.reconstruction_fraction}, secagg.min-contributors = "
                f"{rules.min_contributors}) or not a majority", context)
    _check_peers(record, state, identity, me, group, context)
    enc_keys = dict(zip(nodes, record["pk-enc"]))
    seed_shares = keys.split_secret(state["seed"], threshold, group)
    key_shares = keys.split_secret(state["sk-mask"], threshold, group)
    sealed = [keys.seal_shares(state["sk-enc"], enc_keys[dst], me, dst, seed_shares[dst],
                               key_shares[dst]) for dst in group]
    state.update({"nodes": nodes, "pk-mask": list(record["pk-mask"]),
                  "pk-enc": list(record["pk-enc"]), "identities": list(record["identities"]),
                  "signatures": list(record["signatures"]),
                  "commitments": list(record["seed-commitments"]),
                  "threshold": threshold, "group": group,
                  "num-neighbours": int(record["num-neighbours"]),
                  "min-contributors": rules.min_contributors})
    return _reply(message, **{RECORD: ConfigRecord({"dst": group, "ciphertexts": sealed})})


def _receive_shares(message: Message, state: ConfigRecord, record: ConfigRecord,
                    context: Context) -> None:
    """Decrypt and keep the shares the server forwards; refuse unless at least threshold
    group members' shares (this node's own among them) arrived."""
    me = message.metadata.dst_node_id
    enc_keys = dict(zip(state["nodes"], state["pk-enc"]))
    group = set(state["group"])
    senders = [int(s) for s in record["src"]]
    if me not in senders or not set(senders) <= group or len(set(senders)) != len(senders):
        _refuse("forwarded shares must include this node's own and come only from its "
                "neighbours, once each", context)
    if len(senders) < int(state["threshold"]):
        _refuse(f"shares from {len(senders)} group members arrived, fewer than the threshold "
                f"{state['threshold']}: masking with so few peers would expose this update",
                context)
    opened = [keys.open_shares(state["sk-enc"], enc_keys[src], src, me, ct)
              for src, ct in zip(senders, record["ciphertexts"])]
    state.update({"held-src": senders, "held-seed": [o[0] for o in opened],
                  "held-key": [o[1] for o in opened]})


def _rounding_seed(message: Message, partition_id: int, run_seed: RunSeedFn) -> int:
    """Stochastic rounding seeded by (run seed, round, partition): a resumed run repeats."""
    record = message.content.config_records.get("config", {})
    return seed_for(run_seed(message), int(record.get("server-round", 0)), partition_id,
                    ROUNDING_STREAM)


def _public(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a masked reply may show in the clear: the partition id and the DP
    accountant's bookkeeping."""
    return {key: value for key, value in metrics.items()
            if key in PUBLIC_METRICS or key.startswith("dp-")}


def _weight(metrics: Mapping[str, Any], spec: SumSpec, weighted: bool,
            context: Context) -> int:
    """This client's weight: its example count clipped to the round's bound (1 when the
    round weighs clients equally); a client without examples has nothing to contribute."""
    count = metrics.get(WEIGHT_KEY)
    if not isinstance(count, (int, float)) or not count >= 1:
        _refuse(f"this client has no examples to contribute ({WEIGHT_KEY} = {count!r})",
                context)
    if not weighted:
        return 1
    if count > spec.max_weight:
        log.info("weight %s clipped to the round's bound %d (strategy.max-num-examples)",
                 count, spec.max_weight)
    return int(min(count, spec.max_weight))


def _field_bits(record: ConfigRecord, state: ConfigRecord, spec: SumSpec,
                context: Context) -> int:
    """The sum field the server chose, if it holds every participant's encoded update."""
    field = int(record["field-bits"])
    try:
        needed = sum_field_bits(int(record["bits"]), spec.max_weight, len(state["nodes"]))
    except ConfigError as error:
        _refuse(str(error), context)
    if field not in (32, 64) or field < needed:
        _refuse(f"a {field}-bit sum field cannot hold {len(state['nodes'])} clients' updates "
                f"at {record['bits']} bits and weights up to {spec.max_weight}; it needs "
                f"{needed} bits (the sum would wrap)", context)
    return field


def _apply_masks(arrays: Sequence[np.ndarray], state: ConfigRecord, me: int) -> None:
    """The self mask and the pairwise masks with the peers whose shares this node holds, one
    stream per array."""
    mask_keys = dict(zip(state["nodes"], state["pk-mask"]))
    pairwise = [(keys.pairwise_seed(state["sk-mask"], mask_keys[peer]), 1 if me < peer else -1)
                for peer in state["held-src"] if peer != me]
    for stream, array in ((VECTOR_STREAM, arrays[0]), (SUMS_STREAM, arrays[1])):
        apply_mask(array, state["seed"], 1, stream)
        for seed, sign in pairwise:
            apply_mask(array, seed, sign, stream)


def _masked_reply(message: Message, context: Context, hooks: ClientHooks, purpose: str,
                  handler: TrainFn) -> Message:
    """Stage 3 for either purpose: take the shares, run the app's handler, encode its update
    (training) and its figures as the round asks, mask them."""
    record = _stage_record(message)
    state = _state(context, record)
    if state["purpose"] != purpose:
        _refuse(f"keys made for {state['purpose']} were asked to mask for {purpose}", context)
    _receive_shares(message, state, record, context)
    reply = handler(message, context)
    metrics = dict(reply.content.metric_records.get("metrics", {}))
    spec = SumSpec.from_record(record)
    weight = _weight(metrics, spec, record.get("weighting", "examples") == "examples", context)
    field = _field_bits(record, state, spec, context)
    rng = np.random.default_rng(_rounding_seed(message, int(metrics.get("partition-id", 0)),
                                               hooks.run_seed))
    quantizer = Quantizer(float(record["bound"]), int(record["bits"]), field)
    vector = np.zeros(int(record["size"]), quantizer.dtype)
    if purpose == TRAIN:
        arrays = reply.content.array_records.get("arrays")
        if arrays is None:  # it said it could contribute at stage 1
            _refuse("this client has no update to contribute (its DP budget ran out after key "
                    "sharing)", context)
        update = from_record(arrays)
        if set(update) != set(record["names"]):
            raise ValueError("the update's parameters differ from the ones the server "
                             "aggregates")
        max_norm = float(record.get("max-norm", 0.0)) or None
        quantizer.encode([update[name] for name in record["names"]], weight, vector, rng,
                         max_norm=max_norm)
        del update, arrays
    sums = spec.encode(weight, metrics, rng)
    _apply_masks([vector, sums], state, message.metadata.dst_node_id)
    return _reply(message, metrics=MetricRecord(_public(metrics)),
                  **{MASKED: ArrayRecord({VECTOR: Array(vector), SUMS: Array(sums)})})


def handle_mask(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 3 (training): train, then quantize and mask the update and the sums."""
    return _masked_reply(message, context, hooks, TRAIN, hooks.train)


def handle_evaluate_mask(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 3 (federated evaluation): evaluate, then mask the figures as sums."""
    return _masked_reply(message, context, hooks, EVALUATE, hooks.evaluate)


def _survivor_sets(record: ConfigRecord, state: ConfigRecord, me: int,
                   context: Context) -> tuple[list[int], list[int]]:
    """The announced (survivors, dropouts), checked against what this node knows."""
    active = sorted({int(n) for n in record["active"]})
    dropped = sorted({int(n) for n in record["dropped"]})
    nodes = set(state["nodes"])
    if set(active) & set(dropped):
        _refuse("the server named nodes both surviving and dropped", context)
    if not set(active) | set(dropped) <= nodes:
        _refuse("the survivor list names nodes that never shared keys", context)
    if me not in active:
        _refuse("this node is not among the survivors", context)
    masked_with = set(state["held-src"])  # itself and the peers whose masks are on its update
    alive = len(masked_with & set(active))
    if alive < int(state["threshold"]):
        _refuse(f"only {alive} of the {len(masked_with)} clients this node masked with (itself "
                f"included) are named survivors, fewer than the threshold {state['threshold']}: "
                "the others' mask keys would strip its update bare", context)
    if len(active) < int(state["min-contributors"]):
        _refuse(f"{len(active)} survivors, fewer than secagg.min-contributors = "
                f"{state['min-contributors']}", context)
    return active, dropped


def handle_consistency(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 4: sign the survivor set (once per round: a second, different set is refused)."""
    record = _stage_record(message)
    state = _state(context, record)
    me = message.metadata.dst_node_id
    active, dropped = _survivor_sets(record, state, me, context)
    if "signed-active" in state:
        if (list(state["signed-active"]), list(state["signed-dropped"])) != (active, dropped):
            _refuse("the server asked this node to sign a second, different survivor set",
                    context)
    state.update({"signed-active": active, "signed-dropped": dropped})
    identity = hooks.identity(message, context)
    signature = identity.sign(transcript(SIGNED_SURVIVORS, str(record["round"]), active,
                                         dropped))
    return _reply(message, **{RECORD: ConfigRecord({"signature": signature})})


def _check_survivor_signatures(record: ConfigRecord, state: ConfigRecord,
                               active: Sequence[int], dropped: Sequence[int],
                               context: Context, identity: Identity) -> None:
    """For every client whose share this node would reveal, a majority of that client's share
    group (at least the threshold) signed exactly this set, each with the registered key its
    signed round keys name. Only those groups' signatures are checked (under SecAgg+ a few
    neighbourhoods, not the whole federation)."""
    nodes = list(state["nodes"])
    at = {node: i for i, node in enumerate(nodes)}
    owners = [o for o in state["held-src"] if o in active or o in dropped]
    groups = {o: keys.share_group(o, nodes, int(state["num-neighbours"])) for o in owners}
    relevant = set().union(*groups.values()) & set(active)
    signed = transcript(SIGNED_SURVIVORS, str(record["round"]), active, dropped)
    valid = set()
    for signer, signature in zip(record["signers"], record["signatures"]):
        signer = int(signer)
        if signer not in relevant or signer in valid:
            continue
        i = at[signer]
        bundle = transcript(SIGNED_KEYS, str(record["round"]), signer, state["pk-mask"][i],
                            state["pk-enc"][i], state["commitments"][i])
        public = state["identities"][i]
        if identity.registered(public) and verify(public, bundle, state["signatures"][i]) \
                and verify(public, signed, signature):
            valid.add(signer)
    for owner, group in groups.items():
        needed = signatures_needed(int(state["threshold"]), group)
        if len(valid & group) < needed:
            _refuse(f"{len(valid & group)} valid signatures on this survivor set from client "
                    f"{owner}'s share group of {len(group)}, fewer than {needed} (a majority "
                    "of the group and the threshold)", context)


def handle_unmask(message: Message, context: Context, hooks: ClientHooks) -> Message:
    """Stage 5: with the survivors' signatures on the set this node signed, reveal seed shares
    of survivors and key shares of dropouts, never both."""
    record = _stage_record(message)
    state = _state(context, record)
    me = message.metadata.dst_node_id
    active, dropped = _survivor_sets(record, state, me, context)
    if "signed-active" not in state or (list(state["signed-active"]),
                                        list(state["signed-dropped"])) != (active, dropped):
        _refuse("the survivor set to unmask is not the one this node signed", context)
    _check_survivor_signatures(record, state, active, dropped, context,
                               hooks.identity(message, context))
    nodes, shares = [], []
    for src, seed_share, key_share in zip(state["held-src"], state["held-seed"],
                                          state["held-key"]):
        if src in active or src in dropped:
            nodes.append(src)
            shares.append(seed_share if src in active else key_share)
    del context.state[STATE]
    return _reply(message, **{RECORD: ConfigRecord({"nodes": nodes, "shares": shares})})


def register(app: ClientApp, hooks: ClientHooks) -> None:
    """Register the stage handlers on a ClientApp (message types in `protocol`)."""
    for stage, handler, kind in ((KEYS, handle_keys, app.query), (SHARES, handle_shares, app.query),
                                 (MASK, handle_mask, app.train),
                                 (EVAL_MASK, handle_evaluate_mask, app.evaluate),
                                 (CONSISTENCY, handle_consistency, app.query),
                                 (UNMASK, handle_unmask, app.query)):
        kind(action(stage))(functools.partial(handler, hooks=hooks))
