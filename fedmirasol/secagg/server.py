"""The server-side driver: runs the secure-aggregation stages over a Grid for one round and
returns the weighted mean of the survivors' updates, which is all the server learns; or, for
federated evaluation, the sums of the clients' evaluation figures.

The server sees public keys, signatures, encrypted shares, masked vectors (uniformly random in
the sum field to anyone without the masks), public bookkeeping (partition ids, DP accountant
figures) and, at the end, the shares needed to remove the masks from the *sum*: the sum of the
updates and of the figures (`sums`: weights, contributor count, losses, accuracies). A round
fails (the caller keeps the previous model and records why) when too few clients are left to
reconstruct, fewer than `secagg.min-contributors` contributed, the unmasked sums are beyond
what honest clients can send (a weight over the bound), or the honest clients refuse a stage
(see `fedmirasol.secagg.client`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedmirasol.core.metrics import Traffic
from fedmirasol.core.parameters import to_record
from fedmirasol.core.reply_checks import Rejection, check_metrics, error_reason
from fedmirasol.core import vector
from fedmirasol.secagg import keys, protocol
from fedmirasol.secagg.masking import apply_mask
from fedmirasol.secagg.protocol import (
    EVALUATE, MASKED, RECORD, SUMS, SUMS_STREAM, TRAIN, VECTOR, VECTOR_STREAM,
    signatures_needed,
)
from fedmirasol.secagg.quantization import CapacityExceeded, Quantizer
from fedmirasol.secagg.sums import Inconsistent, Sums, SumSpec
from fedmirasol.config.run import RunConfig
from fedmirasol.config.secagg import SecAggConfig
from fedmirasol.errors import ConfigError

log = logging.getLogger("fedmirasol.secagg")

NumpyState = dict[str, np.ndarray]
Screen = Callable[[Message], str | None]  # why a masked reply must stay out of the sum


# The kinds of value a stage reply's fields must hold (a client's reply is untrusted input).
BYTES, NUMBER, INTS, BYTES_LIST = "bytes", "a number", "a list of integers", "a list of bytes"
_KINDS: dict[str, Callable[[object], bool]] = {
    BYTES: lambda v: isinstance(v, bytes),
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    INTS: lambda v: isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v),
    BYTES_LIST: lambda v: isinstance(v, list) and all(isinstance(x, bytes) for x in v),
}


KEY_FIELDS = {"pk-mask": BYTES, "pk-enc": BYTES, "seed-commitment": BYTES,
              "identity": BYTES, "signature": BYTES}


class RoundFailed(RuntimeError):
    """Secure aggregation cannot complete this round (the reason is the message)."""


@dataclass
class SecureRound:
    """What one securely aggregated round produced."""

    mean: NumpyState | None = None  # weighted mean of the survivors' updates
    weight_sum: int = 0
    survivors: list[int] = field(default_factory=list)  # node ids inside the sum
    replies: list[Message] = field(default_factory=list)  # survivors' and exhausted clients'
    # public bookkeeping (partition ids, DP figures): nothing data-dependent
    contributors: int = 0  # securely summed count of the clients inside the sum
    sums: Sums | None = None  # the secure sums of the figures (weights, counts, metrics)
    train_loss: float | None = None  # weighted mean of the contributors' train losses (secure)
    rejections: list[Rejection] = field(default_factory=list)
    failure: str | None = None
    traffic: Traffic = field(default_factory=Traffic)  # every stage's bytes on the wire
    stage_seconds: dict[str, float] = field(default_factory=dict)


class SecureAggregator:
    """Runs the stages of `protocol` for the nodes a strategy sampled."""

    def __init__(self, settings: SecAggConfig, spec: Sequence[tuple[str, tuple[int, ...]]],
                 bound: float, weighting: str, max_weight: int = 100_000,
                 max_norm: float | None = None, partitions: Mapping[int, int] | None = None
                 ) -> None:
        """`spec`: the (name, shape) layout of the update; `bound`: every update value's
        declared bound; `weighting`: "examples" or "equal"; `max_weight`: the largest weight
        a client masks (`strategy.max-num-examples`); `max_norm`: under client-level DP, the
        clip norm every quantized update keeps."""
        self.settings, self.spec, self.bound, self.weighting = settings, list(spec), bound, weighting
        self.max_weight = 1 if weighting == "equal" else int(max_weight)
        self.eval_max_weight = int(max_weight)
        self.max_norm = max_norm
        self.partitions = partitions or {}
        self.size = vector.size(spec)

    # -- plumbing -----------------------------------------------------------------------
    def _exchange(self, grid: Grid, stage: str, contents: Mapping[int, RecordDict],
                  timeout: float, result: SecureRound, group: str,
                  fields: Mapping[str, str] | None = None) -> dict[int, Message]:
        """Send one stage's messages; the good replies by node, the rest into rejections
        (`fields`: keys a reply's stage record must carry, and their kinds)."""
        started = time.perf_counter()
        messages = [Message(content=content, dst_node_id=node, message_type=stage,
                            group_id=group) for node, content in contents.items()]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        result.traffic.count(messages, replies)
        good: dict[int, Message] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._reject(result, node, stage, error_reason(reply))
            elif node in contents and (problem := self._lacks(reply, fields)):
                self._reject(result, node, stage, problem)
            elif node in contents:
                good[node] = reply
        for node in contents:
            if node not in good and not any(r.node_id == node for r in result.rejections):
                self._reject(result, node, stage, f"no reply within {timeout:.0f} s")
        result.stage_seconds[protocol.action(stage)] = time.perf_counter() - started
        return good

    def _reject(self, result: SecureRound, node: int, stage: str, reason: str) -> None:
        result.rejections.append(Rejection(node, self.partitions.get(node),
                                           f"{protocol.action(stage)}: {reason}"))

    @staticmethod
    def _record(message: Message) -> ConfigRecord:
        return message.content.config_records[RECORD]

    @staticmethod
    def _lacks(reply: Message, fields: Mapping[str, str] | None) -> str | None:
        """Why a reply cannot be used: its stage record or one of `fields` is missing or not of
        its kind (`_KINDS`), or its list fields differ in length (they pair up)."""
        if not fields:
            return None
        record = reply.content.config_records.get(RECORD)
        if record is None:
            return f"reply has no {RECORD!r} record"
        missing = [key for key in fields if key not in record]
        if missing:
            return f"reply's {RECORD!r} record lacks {missing}"
        for key, kind in fields.items():
            if not _KINDS[kind](record[key]):
                return f"reply's {key!r} is not {kind}"
        lengths = {len(record[key]) for key, kind in fields.items() if kind.startswith("a list")}
        return "reply's lists differ in length" if len(lengths) > 1 else None

    # -- the round ----------------------------------------------------------------------
    def run(self, grid: Grid, train_messages: Sequence[Message], timeout: float,
            server_round: int, partitions: Mapping[int, int] | None = None,
            screen: Screen | None = None) -> SecureRound:
        """Securely aggregate the updates the `train_messages` ask for (`partitions`: node id
        -> partition id, to name clients in rejections; `screen`: an extra check of each
        masked reply's metrics, a reply it faults is left out of the sum like a dropout)."""
        spec = SumSpec(self.max_weight, (("train-loss", protocol.LOSS_CAP),))
        return self._protocol(grid, train_messages, timeout, server_round, partitions, screen,
                              TRAIN, spec)

    def evaluate(self, grid: Grid, evaluate_messages: Sequence[Message], timeout: float,
                 server_round: int, metrics: Sequence[tuple[str, float]],
                 partitions: Mapping[int, int] | None = None) -> SecureRound:
        """Federated evaluation as secure sums: the clients' example counts and their
        `metrics` ((name, cap) pairs), each clipped to [0, cap]; no update."""
        spec = SumSpec(self.eval_max_weight, tuple(metrics))
        return self._protocol(grid, evaluate_messages, timeout, server_round, partitions,
                              None, EVALUATE, spec)

    def _protocol(self, grid: Grid, messages: Sequence[Message], timeout: float,
                  server_round: int, partitions: Mapping[int, int] | None,
                  screen: Screen | None, purpose: str, spec: SumSpec) -> SecureRound:
        if partitions is not None:
            self.partitions = partitions
        result = SecureRound()
        try:
            self._run(grid, messages, timeout, server_round, result, screen, purpose, spec)
        except RoundFailed as failure:
            result.mean, result.sums = None, None
            result.failure = f"secure aggregation failed: {failure}"
        return result

    def _run(self, grid: Grid, train_messages: Sequence[Message], timeout: float,
             server_round: int, result: SecureRound, screen: Screen | None, purpose: str,
             spec: SumSpec) -> None:
        group = str(server_round)
        round_id = f"{server_round}-{purpose}-{time.time_ns()}"
        train = {m.metadata.dst_node_id: m.content for m in train_messages}
        sampled = len(train)
        minimum = self.settings.min_contributors
        size = self.size if purpose == TRAIN else 0

        # 1. Signed public keys; clients with nothing to contribute say so and are left out.
        base = {node: self._with_config(content, {"round": round_id, "purpose": purpose})
                for node, content in train.items()}
        replies = self._exchange(grid, protocol.KEYS, base, timeout, result, group)
        bundles: dict[int, ConfigRecord] = {}
        for node, reply in sorted(replies.items()):
            if RECORD not in reply.content.config_records:
                problem = screen(reply) if screen else None
                if problem or not reply.content.metric_records or purpose != TRAIN:
                    self._reject(result, node, protocol.KEYS,
                                 problem or "reply carries neither keys nor bookkeeping")
                else:
                    result.replies.append(reply)  # nothing to contribute (e.g. DP budget spent)
                continue
            problem = self._lacks(reply, KEY_FIELDS)
            if problem:
                self._reject(result, node, protocol.KEYS, problem)
            else:
                bundles[node] = self._record(reply)
        nodes = sorted(bundles)
        self._require(len(nodes) >= minimum, f"only {len(nodes)} of {sampled} sampled clients "
                      f"can contribute, fewer than secagg.min-contributors = {minimum}")
        column = lambda key: [bundles[n][key] for n in nodes]  # noqa: E731
        pk_mask, commitments = column("pk-mask"), dict(zip(nodes, column("seed-commitment")))
        groups = {n: keys.share_group(n, nodes, self.settings.num_neighbours) for n in nodes}
        threshold = self.settings.threshold(len(groups[nodes[0]]))
        self._require(threshold <= len(groups[nodes[0]]),
                      f"a share group of {len(groups[nodes[0]])} cannot meet the threshold "
                      f"{threshold} (secagg.min-contributors = {minimum})")

        # 2. Encrypted shares, to be forwarded to their holders.
        record = {"round": round_id, "nodes": nodes, "pk-mask": pk_mask,
                  "pk-enc": column("pk-enc"), "seed-commitments": column("seed-commitment"),
                  "identities": column("identity"), "signatures": column("signature"),
                  "num-neighbours": self.settings.num_neighbours, "threshold": threshold}
        replies = self._exchange(grid, protocol.SHARES, {
            n: self._with_config(train[n], record) for n in nodes}, timeout, result, group,
            {"dst": INTS, "ciphertexts": BYTES_LIST})
        inbox: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for src, reply in sorted(replies.items()):
            shares = self._record(reply)
            for dst, ciphertext in zip(shares["dst"], shares["ciphertexts"]):
                if dst in replies:  # holders that vanished cannot hold anything
                    inbox[int(dst)].append((src, ciphertext))
        shared = sorted(replies)
        self._check_holders(shared, shared, groups, threshold, "after key sharing")

        # 3. Train (or evaluate) and mask, summed as the masked vectors are checked.
        try:
            field_bits = self.settings.field_bits(spec.max_weight, len(nodes))
            spec.check_capacity(len(nodes))
        except (ConfigError, Inconsistent) as error:
            raise RoundFailed(str(error)) from None
        mask_record = {"round": round_id, "bits": self.settings.bits, "field-bits": field_bits,
                       "weighting": self.weighting if purpose == TRAIN else "examples",
                       "names": [name for name, _ in self.spec] if purpose == TRAIN else [],
                       "size": size, "bound": self.bound, "clients": len(shared),
                       "max-norm": float(self.max_norm or 0.0), **spec.to_record()}
        quantizer = Quantizer(self.bound, self.settings.bits, field_bits)
        contents = {n: self._with(train[n], {**mask_record,
                                             "src": [s for s, _ in inbox[n]],
                                             "ciphertexts": [c for _, c in inbox[n]]})
                    for n in shared}
        replies = self._exchange(grid, protocol.MASK_STAGES[purpose], contents, timeout,
                                 result, group)
        del contents
        total = np.zeros(size, quantizer.dtype)
        sums = np.zeros(spec.size, np.uint64)
        for node, reply in sorted(replies.items()):
            problem = self._check_masked(reply, quantizer.dtype, size, spec.size) \
                or (screen(reply) if screen else None)
            if problem:
                self._reject(result, node, protocol.MASK_STAGES[purpose], problem)
                continue
            masked = reply.content.array_records[MASKED]
            total += masked[VECTOR].numpy()
            sums += masked[SUMS].numpy()
            result.survivors.append(node)
            result.replies.append(reply)
        del replies
        active = sorted(result.survivors)
        dropped = sorted(set(shared) - set(active))
        self._check_holders(active, shared, groups, threshold, "after masking")
        self._require(len(active) >= minimum, f"{len(active)} clients masked an update, fewer "
                      f"than secagg.min-contributors = {minimum}")

        # 4. Every survivor signs the survivor set.
        sets = {"round": round_id, "active": active, "dropped": dropped}
        replies = self._exchange(grid, protocol.CONSISTENCY, {
            n: RecordDict({RECORD: ConfigRecord(sets)}) for n in active}, timeout, result,
            group, {"signature": BYTES})
        signers = set(replies)
        for owner in active + dropped:
            needed = signatures_needed(threshold, groups[owner])
            got = len(signers & groups[owner])
            self._require(got >= needed, f"{got} of client {owner}'s share group signed the "
                          f"survivor set, fewer than the {needed} its holders require")

        # 5. Unmask the sum: each survivor gets the signatures of the groups it holds shares of.
        def signatures_for(holder: int) -> dict[str, list]:
            wanted = sorted(signers & set().union(*(groups[o] for o in groups[holder])))
            return {"signers": wanted,
                    "signatures": [self._record(replies[s])["signature"] for s in wanted]}

        replies = self._exchange(grid, protocol.UNMASK, {
            n: RecordDict({RECORD: ConfigRecord({**sets, **signatures_for(n)})})
            for n in active}, timeout, result, group, {"nodes": INTS, "shares": BYTES_LIST})
        revealed: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for holder, reply in sorted(replies.items()):
            record = self._record(reply)
            if len(set(record["nodes"])) < len(record["nodes"]):  # one share per client held
                self._reject(result, holder, protocol.UNMASK,
                             "revealed two shares for one client; none of its shares was used")
                continue
            for node, share in zip(record["nodes"], record["shares"]):
                revealed[node].append((holder, share))
        masks = dict(zip(nodes, pk_mask))
        for node in active + dropped:
            self._require(len(revealed[node]) >= threshold,
                          f"only {len(revealed[node])} of {threshold} shares needed to unmask "
                          f"client {node} arrived ({len(active) - len(replies)} survivor(s) "
                          "vanished while unmasking)")
            secret = self._rebuild(node, revealed[node], threshold, result,
                                   fits=(lambda s, n=node: keys.seed_commitment(s) == commitments[n])
                                   if node in active else
                                   (lambda s, n=node: keys.public_key_of(s) == masks[n]))
            if node in active:
                self._unmask([total, sums], secret, -1)
            else:  # remove the pairwise masks the survivors added towards this dropout
                for peer in groups[node]:
                    if peer in active:
                        seed = keys.pairwise_seed(secret, masks[peer])
                        self._unmask([total, sums], seed, -1 if peer < node else 1)
        try:
            result.sums = spec.decode(sums, len(active))
        except Inconsistent as error:
            raise RoundFailed(str(error)) from None
        result.contributors = result.sums.contributors
        self._require(result.contributors >= minimum,
                      f"the secure sum counts {result.contributors} contributors, fewer than "
                      f"secagg.min-contributors = {minimum}")
        result.weight_sum = result.sums.weight
        if purpose == TRAIN:
            try:
                quantizer.check_capacity(result.weight_sum, len(active))
            except CapacityExceeded as error:
                raise RoundFailed(str(error)) from None
            result.train_loss = result.sums.weighted_mean("train-loss")
            result.mean = vector.unflatten(quantizer.decode(total, result.weight_sum),
                                           self.spec)

    @staticmethod
    def _unmask(arrays: Sequence[np.ndarray], seed: bytes, sign: int) -> None:
        """Add ``sign`` x the masks of `seed` to the update and the sums (their own streams)."""
        for array, stream in zip(arrays, (VECTOR_STREAM, SUMS_STREAM)):
            apply_mask(array, seed, sign, stream)

    def _rebuild(self, node: int, shares: Sequence[tuple[int, bytes]], threshold: int,
                 result: SecureRound, fits: Callable[[bytes], bool]) -> bytes:
        """`node`'s secret from shares that rebuild what it committed to; holders whose
        shares do not fit are recorded (their shares are not used)."""
        what = "self-mask seed" if node in result.survivors else "mask key"
        secret, bad = keys.rebuild_verified(shares, threshold, fits)
        if secret is None:
            raise RoundFailed(f"the shares revealed for client {node} do not rebuild the "
                              f"{what} it committed to (no {threshold} of the {len(shares)} "
                              "revealed shares fit)")
        for holder in bad:
            self._reject(result, holder, protocol.UNMASK,
                         f"revealed a share of client {node}'s {what} that does not fit its "
                         "commitment; the share was not used (this client's update stays in "
                         "the sum)")
        return secret

    # -- checks -------------------------------------------------------------------------
    @staticmethod
    def _require(condition: bool, reason: str) -> None:
        if not condition:
            raise RoundFailed(reason)

    def _check_holders(self, alive: Iterable[int], owners: Iterable[int],
                       groups: Mapping[int, list[int]], threshold: int, when: str) -> None:
        """Every owner's secrets must still have `threshold` living holders."""
        alive = set(alive)
        for owner in owners:
            holders = len(alive & set(groups[owner]))
            if holders < threshold:
                raise RoundFailed(
                    f"too many clients dropped {when}: {len(alive)} left, and client {owner}'s "
                    f"secrets have {holders} holders, fewer than the threshold {threshold} "
                    f"(secagg.reconstruction-fraction = {self.settings.reconstruction_fraction})")

    @staticmethod
    def _check_masked(reply: Message, dtype: np.dtype, size: int, sums: int) -> str | None:
        records = reply.content.array_records
        if MASKED not in records or not {VECTOR, SUMS} <= set(records[MASKED]):
            return "reply carries no masked vector and sums"
        for key, kind, length in ((VECTOR, dtype, size), (SUMS, np.dtype(np.uint64), sums)):
            masked = records[MASKED][key]
            if masked.dtype != kind.name or tuple(masked.shape) != (length,):
                return (f"masked {key} has dtype {masked.dtype} and shape "
                        f"{tuple(masked.shape)}, expected {kind.name} and {(length,)}")
        return check_metrics(reply.content, ("partition-id",))

    @staticmethod
    def _with_config(content: RecordDict, record: Mapping[str, object]) -> RecordDict:
        """This stage's record plus the run config of the train message (no arrays)."""
        merged = RecordDict({RECORD: ConfigRecord(dict(record))})
        if "config" in content.config_records:
            merged["config"] = content.config_records["config"]
        return merged

    @staticmethod
    def _with(content: RecordDict, record: Mapping[str, object]) -> RecordDict:
        """The train message's records plus this stage's."""
        merged = RecordDict({key: value for key, value in content.items()})
        merged[RECORD] = ConfigRecord(dict(record))
        return merged


def build_aggregator(config: RunConfig, global_shared: Mapping[str, np.ndarray]
                     ) -> SecureAggregator | None:
    """The run's aggregator when ``secagg.enabled``, over the shared parameters only."""
    if not config.secagg.enabled:
        return None
    spec = vector.layout(global_shared)
    max_norm = config.secagg_max_norm()
    if max_norm is not None:  # rounding that the norm bound has to pull back in, worst case
        worst = math.sqrt(vector.size(spec)) / 2 ** (config.secagg.bits - 1)
        if worst > 0.1:
            log.warning("secagg.bits = %d: rounding %d parameters can add up to %.0f %% of the "
                        "clip norm, which the encoder takes back by truncating values (biased "
                        "toward zero); raise secagg.bits for a closer sum", config.secagg.bits,
                        vector.size(spec), 100 * worst)
    return SecureAggregator(config.secagg, spec, config.secagg_bound(),
                            config.secagg_weighting(), config.strategy.max_num_examples,
                            max_norm)


def mean_reply(result: SecureRound, instruction: Message, as_sum: bool = False) -> Message:
    """One synthetic train reply holding the secure mean (or, `as_sum`, the sum: the mean
    times the total weight), for a Flower strategy or client-level DP to aggregate (FedAvg
    returns it as is; FedAdam, FedYogi, FedAvgM take their server step from it)."""
    if result.mean is None:
        raise ValueError("no secure mean to hand over")
    values = result.mean
    if as_sum:
        values = {name: value * np.float32(result.weight_sum) for name, value in values.items()}
    return Message(content=RecordDict({"arrays": to_record(values),
                                       "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=instruction)
