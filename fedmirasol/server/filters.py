"""The chain of reply filters a round's train replies pass, on every aggregation path.

The chain of a run (`reply_filters`, built once): the clients out of their DP budget are taken
out (recorded as exhausted, not rejected); the shape and finiteness checks; the bound on a
reply's weight (`strategy.max-num-examples`); the privacy ledger (every reply's DP figures are
recorded, and an update whose figures the ledger cannot record is rejected); the client-level
clip bound; the norm bound of `defense.*`. Each filter moves the replies it does not keep from
`Screening.kept` to `exhausted` or `rejected` (with the reason); the norm bound keeps every
reply and scales the long ones down.

Under secure aggregation the server sees masked replies: a filter's `check_masked` says why a
masked reply must stay out of the sum (the protocol asks it of each reply before unmasking),
and `screen_masked` does what still applies after the protocol (recording). A filter that
cannot judge a masked update (its shapes, its norm) leaves both as they are.

A new check (e.g. robust screening) is a `ReplyFilter` here or in the feature's package and
one line in `reply_filters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import Message

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import from_record, to_record
from fedmirasol.core.reply_checks import (ArrayChecks, Rejection, validate_train_replies,
                                          weight_problem)
from fedmirasol.privacy.client_level import clip_update
from fedmirasol.privacy.server_side import ServerPrivacy


@dataclass
class Screening:
    """One round's train replies going through the chain."""

    server_round: int
    replies: list[Message]  # every reply received (the privacy ledger records them all)
    partitions: Mapping[int, int]  # node -> partition
    destinations: Mapping[str, int]  # sent message id -> node
    kept: list[Message]  # still in
    exhausted: list[Message] = field(default_factory=list)  # out of DP budget: trained nothing
    rejected: list[Rejection] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # what filters did, for the round record


class ReplyFilter:
    """One check of the chain; the defaults leave masked replies alone."""

    def screen(self, s: Screening) -> None:
        """Move the replies of `s.kept` this filter does not keep."""
        raise NotImplementedError

    def check_masked(self, server_round: int, reply: Message) -> str | None:
        """Why a masked reply must stay out of the secure sum (None: it may go in)."""
        return None

    def screen_masked(self, s: Screening) -> None:
        """After the secure sum: what applies to the masked replies that took part."""


class TakeOutExhausted(ReplyFilter):
    """Replies that say "budget exhausted" carry metrics only: recorded as exhausted (those
    clients are left out of later rounds); a malformed one is rejected."""

    def __init__(self, privacy: ServerPrivacy) -> None:
        self.privacy = privacy

    def screen(self, s: Screening) -> None:
        s.kept, exhausted, rejected = self.privacy.take_exhausted(s.kept, s.partitions)
        s.exhausted += exhausted
        s.rejected += rejected

    def check_masked(self, server_round: int, reply: Message) -> str | None:
        return self.privacy.exhausted_problem(reply)

    def screen_masked(self, s: Screening) -> None:
        # a malformed "exhausted" reply was kept out of the sum (and named) by check_masked
        s.kept, exhausted, _ = self.privacy.take_exhausted(s.kept, s.partitions)
        s.exhausted += exhausted


class Validation(ReplyFilter):
    """An update of the global model's shapes, finite, from a node that was sent a message
    (a masked vector is checked by the secure-aggregation protocol itself)."""

    def __init__(self, expected: Mapping[str, tuple[int, ...]],
                 ahead: ArrayChecks | None = None) -> None:
        self.expected = expected
        self.ahead = ahead  # the updates checked as their replies arrived

    def screen(self, s: Screening) -> None:
        s.kept, rejected = validate_train_replies(s.kept, self.expected, s.partitions,
                                                  s.destinations, self.ahead)
        s.rejected += rejected


class WeightBound(ReplyFilter):
    """A reply's weight (its example count) at most `strategy.max-num-examples`: a client
    claiming more (say 1e12) would be FedAvg's whole result; it is rejected by name. Under
    secure aggregation the weight is a masked sum that each client clips to the bound before
    masking (and the protocol fails a round whose summed weights exceed it)."""

    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight

    def check_masked(self, server_round: int, reply: Message) -> str | None:
        # an encrypted reply (homomorphic encryption) shows its weight in the clear
        return weight_problem(reply.content, self.max_weight)

    def screen(self, s: Screening) -> None:
        kept = []
        for reply in s.kept:
            problem = weight_problem(reply.content, self.max_weight)
            if problem is None:
                kept.append(reply)
            else:
                node = reply.metadata.src_node_id
                s.rejected.append(Rejection(node, s.partitions.get(node), problem))
        s.kept = kept


class PrivacyLedger(ReplyFilter):
    """Under DP-SGD: every reply's DP figures go to the ledger (rejected or not, the spend
    happened), and an update whose figures the ledger cannot record is rejected: nothing is
    aggregated whose privacy spend is not on record."""

    def __init__(self, privacy: ServerPrivacy) -> None:
        self.privacy = privacy

    def screen(self, s: Screening) -> None:
        self.privacy.record_clients(s.server_round, s.replies)
        s.kept, rejected = self.privacy.check_reported(s.server_round, s.kept, s.partitions)
        s.rejected += rejected

    def check_masked(self, server_round: int, reply: Message) -> str | None:
        if self.privacy.claims_exhausted(reply):  # judged by TakeOutExhausted
            return None
        return self.privacy.reported_problem(server_round, reply)

    def screen_masked(self, s: Screening) -> None:
        self.privacy.record_clients(s.server_round, s.replies)


class ClipBound(ReplyFilter):
    """Under client-level DP: an update within the clip norm (a masked update's norm cannot be
    inspected: there only the quantization range bounds it)."""

    def __init__(self, privacy: ServerPrivacy) -> None:
        self.privacy = privacy

    def screen(self, s: Screening) -> None:
        s.kept, rejected = self.privacy.check_clipped(s.kept, s.partitions)
        s.rejected += rejected


class NormBound(ReplyFilter):
    """Norm bounding (`defense.norm-bound`, or the round's median update norm under
    `defense.median-norm-bound`): every update longer than the bound is scaled down to it, and
    the clients clipped are recorded (`norm_clipped`). A masked update's norm cannot be
    inspected: under secure aggregation each honest client clips before masking and a
    malicious one is bounded by nothing the server can check."""

    def __init__(self, bound: float, median: bool) -> None:
        self.bound, self.median = bound, median

    def screen(self, s: Screening) -> None:
        updates = [from_record(reply.content.array_records["arrays"]) for reply in s.kept]
        norms = [float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64)))
                                   for v in update.values()))) for update in updates]
        if not norms:
            return
        bound = float(np.median(norms)) if self.median else self.bound
        clipped = []
        for reply, update, norm in zip(s.kept, updates, norms):
            if norm > bound:
                reply.content["arrays"] = to_record(clip_update(update, bound)[0])
                clipped.append(s.partitions.get(reply.metadata.src_node_id))
        s.notes.update(norm_bound=bound, norm_clipped=sorted(clipped))


def reply_filters(config: RunConfig, privacy: ServerPrivacy,
                  expected: Mapping[str, tuple[int, ...]],
                  ahead: ArrayChecks | None = None) -> list[ReplyFilter]:
    """The run's chain, in order (`ahead`: the run's checks of updates as they arrive). (The
    privacy filters do nothing in runs without DP; the norm bound is there under
    `defense.*`.)"""
    defense = config.defense
    bounded = defense.norm_bound > 0 or defense.median_norm_bound
    return [TakeOutExhausted(privacy), Validation(expected, ahead),
            WeightBound(config.strategy.max_num_examples), PrivacyLedger(privacy),
            ClipBound(privacy),
            *([NormBound(defense.norm_bound, defense.median_norm_bound)] if bounded else [])]


def screen(chain: list[ReplyFilter], s: Screening) -> Screening:
    """Run the chain over `s` (plain replies)."""
    for check in chain:
        check.screen(s)
    return s


def screen_masked(chain: list[ReplyFilter], s: Screening) -> Screening:
    """Run the chain's masked-reply part over `s` (after a secure sum)."""
    for check in chain:
        check.screen_masked(s)
    return s


def masked_check(chain: list[ReplyFilter], server_round: int
                 ) -> Callable[[Message], str | None]:
    """The per-reply check the secure-aggregation protocol applies before unmasking: the first
    filter's reason to keep a masked reply out of the sum."""
    def check(reply: Message) -> str | None:
        for f in chain:
            problem = f.check_masked(server_round, reply)
            if problem is not None:
                return problem
        return None

    return check
