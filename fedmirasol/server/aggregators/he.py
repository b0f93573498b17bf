"""Homomorphic encryption (CKKS, fedmirasol.he): the server adds the clients' encrypted updates
and never sees a model.

The server's global state after round 1 is the encrypted sum of the round's replies (the
arrays of `fedmirasol.he.wire`), which it sends with the next train and evaluate messages as
it would send a model; it holds no key. Every client that starts a round or evaluates
decrypts the sum and runs the server's step on it (`he_step.ServerStepOnClients`). Under
client-level DP the clients noise their updates and the server accounts the release.

The reply filters apply as far as ciphertexts allow (as under secure aggregation): the privacy
ledger records every reply's DP figures and clients out of budget are taken out; shapes,
finiteness and norms cannot be inspected (a client refuses to encrypt NaN or Inf).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING

from flwr.app import Message

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState
from fedmirasol.core.reply_checks import Rejection, check_metrics, error_reason, reply_partition
from fedmirasol.he.wire import HEADER_KEY, SAMPLED_KEY, Header, is_encrypted, pack, read_header
from fedmirasol.privacy.server_side import ServerPrivacy
from fedmirasol.server.aggregators.base import Aggregator, Run, TrainOutcome
from fedmirasol.server.filters import Screening, masked_check, screen_masked

if TYPE_CHECKING:
    from fedmirasol.he.ckks import ServerContext


class HEMean(Aggregator):
    """The sum of the encrypted replies becomes the global state; the round's figures gain the
    CKKS error bound of the mean (`he_error_bound`: no decrypted value of the weighted mean
    differs from the plain mean of the same updates by more) and the seconds the sum took."""

    name = "he"

    def __init__(self, context: ServerContext, config: RunConfig) -> None:
        self.context, self.settings = context, config.he
        self.client_level = config.privacy.client_level

    def _problem(self, reply: Message) -> tuple[Header | None, str | None]:
        """The reply's header, or why it cannot go into the sum."""
        if "arrays" not in reply.content.array_records:
            return None, "reply carries no encrypted update"
        reason = check_metrics(reply.content, ("partition-id", "num-examples"))
        if reason is not None:
            return None, reason
        arrays = reply.content.array_records["arrays"]
        if not is_encrypted(arrays):
            return None, f"reply's update is not encrypted (no {HEADER_KEY!r})"
        try:
            header = read_header(arrays)
        except ValueError as error:
            return None, str(error)
        if header.key_id != self.context.key_id:
            return None, (f"WrongContext: encrypted under key id {header.key_id}, not the "
                          f"federation's {self.context.key_id}")
        return header, None

    def train(self, run: Run, server_round: int, messages: list[Message],
              population: int) -> TrainOutcome:
        for message in messages:
            message.content.config_records["config"][SAMPLED_KEY] = len(messages)
        replies = self.exchange(run, server_round, "train", messages)
        check = masked_check(run.filters, server_round)
        rejected: list[Rejection] = []
        answered, candidates = [], []
        for reply in replies:
            reject = lambda why: rejected.append(Rejection(  # noqa: E731
                reply.metadata.src_node_id, reply_partition(reply, run.partitions), why))
            if reply.has_error():
                reject(error_reason(reply))
                continue
            answered.append(reply)
            problem = check(reply)
            if problem is None and not ServerPrivacy.claims_exhausted(reply):
                header, problem = self._problem(reply)
                if problem is None:
                    candidates.append((reply, header))
            if problem is not None:
                reject(problem)
        candidates = self._one_layout(candidates, rejected, run)
        kept = [reply for reply in answered if ServerPrivacy.claims_exhausted(reply)
                and check(reply) is None] + [reply for reply, _ in candidates]
        s = screen_masked(run.filters, Screening(server_round, answered, run.partitions, {},
                                                 kept=kept))
        if not candidates:
            return TrainOutcome([], s.exhausted, rejected, run.global_shared,
                                "no encrypted update to sum")
        from fedmirasol.he.summing import sum_replies  # SEAL: only under HE

        started = time.perf_counter()
        header = candidates[0][1]
        batches, members, left_out = sum_replies(
            self.context, header, [reply.content.array_records["arrays"]
                                   for reply, _ in candidates])
        seconds = time.perf_counter() - started
        for index, reason in left_out.items():
            reply = candidates[index][0]
            rejected.append(Rejection(reply.metadata.src_node_id,
                                      reply_partition(reply, run.partitions), reason))
        accepted = [candidates[i][0] for i in members]
        figures = {"he_sum_seconds": seconds}
        if len(accepted) < self.settings.min_contributors:
            return TrainOutcome(accepted, s.exhausted, rejected, run.global_shared,
                                f"{len(accepted)} encrypted updates, fewer than "
                                f"he.min-contributors = {self.settings.min_contributors}",
                                figures=figures)
        if self.client_level:  # the clients noised their updates: the server accounts
            run.privacy.account_client_level(server_round, len(messages), population)
            divisor = float(len(messages))
        else:
            divisor = sum(float(r.content.metric_records["metrics"]["num-examples"])
                          for r in accepted)
        figures["he_error_bound"] = len(accepted) * self.context.params.noise_bound / divisor
        state = pack(header.summed(server_round, len(accepted), len(messages),
                                   secrets.token_hex(8)), batches)
        return TrainOutcome(accepted, s.exhausted, rejected, state, None,
                            figures=figures)

    @staticmethod
    def _one_layout(candidates: list[tuple[Message, Header]], rejected: list[Rejection],
                    run: Run) -> list[tuple[Message, Header]]:
        """The replies that share the round's layout (the one most of them have; honest
        clients all produce the same); the others are rejected."""
        if not candidates:
            return candidates
        counts = Counter(header.layout.key() for _, header in candidates)
        layout = max(counts, key=lambda key: counts[key])
        for reply, header in candidates:
            if header.layout.key() != layout:
                rejected.append(Rejection(reply.metadata.src_node_id,
                                          reply_partition(reply, run.partitions),
                                          "its encrypted values' layout differs from the other "
                                          "replies' (another model, strategy or round state)"))
        return [(r, h) for r, h in candidates if h.layout.key() == layout]

    def final_model(self, run: Run) -> NumpyState | None:
        return None if is_encrypted(run.global_shared) else run.global_shared
