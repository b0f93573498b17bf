"""The aggregation of an audit run (`fedmirasol privacy-audit`): the run's own mean (the
strategy's, or client-level DP's noised one) with the auditor beside it.

Each round, before the model moves, the auditor sees what the server sees: the global model
the clients started from and each accepted update by partition (sample-level canaries are
scored on them). Its canary clients' updates (client-level audit) join the accepted ones in
the noised sum, and nowhere else: the round's records, counts and figures are the real
clients' alone, and the sum is divided by the number of real clients drawn, as always.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
from flwr.app import Message, RecordDict

from fedmirasol.core.parameters import NumpyState, from_record, to_record
from fedmirasol.server.aggregators.base import Run
from fedmirasol.server.aggregators.mean import StrategyMean


class Auditor(Protocol):
    """What an audit needs of the aggregation (`fedmirasol.privacy.audit`)."""

    def observe(self, server_round: int, global_shared: Mapping[str, np.ndarray],
                updates: Mapping[int, NumpyState]) -> None:
        """The round's starting global model and the accepted updates by partition."""

    def canary_updates(self, server_round: int, sample_rate: float) -> list[NumpyState]:
        """The auditor's canary clients' updates this round (clients drawn at `sample_rate`)."""


def _canary_reply(update: NumpyState) -> Message:
    """A canary client's update in the form the aggregation reads (never sent, never a
    round's participant)."""
    return Message(content=RecordDict({"arrays": to_record(update)}), dst_node_id=0,
                   message_type="train", group_id="audit")


class AuditedMean(StrategyMean):
    """`inner`'s aggregation, observed by `auditor`, with its canary clients in the sum."""

    name = "audited"

    def __init__(self, inner: StrategyMean, auditor: Auditor) -> None:
        self.inner = inner
        self.auditor = auditor
        self.takes_sum = inner.takes_sum

    def step(self, run: Run, server_round: int, accepted: list[Message],
             num_sampled: int, population: int) -> tuple[NumpyState, str | None]:
        partitions = {int(reply.content.metric_records["metrics"]["partition-id"]):
                      from_record(reply.content.array_records["arrays"]) for reply in accepted}
        self.auditor.observe(server_round, run.global_shared, partitions)
        rate = num_sampled / population if population else 0.0
        canaries = [_canary_reply(update) for update in
                    self.auditor.canary_updates(server_round, rate)] if rate > 0 else []
        return self.inner.step(run, server_round, accepted + canaries, num_sampled, population)
