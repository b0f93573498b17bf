"""The server's side of DP in a run: the ledger, clients out of budget, client-level noise.

Each round the server's reply filters (`fedmirasol.server.filters`) and its client-level DP
aggregator hand this object the train replies:

- `take_exhausted` removes the replies that say "budget exhausted" (metrics only, no update);
  those clients are recorded and left out of every later round's training;
- `record_clients` writes each client's ``dp-*`` figures to the privacy ledger (clients whose
  update was rejected spent their privacy too, so every reply with DP metrics is recorded);
- `check_reported` (DP-SGD) rejects updates whose DP figures the ledger cannot record;
- under client-level DP, `check_clipped` rejects updates above the clip bound and `aggregate`
  replaces the strategy's weighted mean by the equal-weight mean of the clipped updates over
  the sampled clients plus Gaussian noise, and composes it in the client-level accountant.

On resume the exhausted clients come back from metrics.jsonl and the client-level accountant
is replayed from every client-level record the ledger holds, including rounds after the
checkpoint: their noised models were released (the ledger line is written before the model
leaves the aggregate), so they stay accounted when those rounds run again.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import Message
from flwr.supercore.differential_privacy import get_norm

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState, from_record, to_record
from fedmirasol.core.reply_checks import (
    EVALUATE_KEYS, Rejection, check_metrics, reply_partition,
)
from fedmirasol.privacy import ledger
from fedmirasol.privacy.client_level import ClientLevelAccountant, clip_update, noise_aggregate
from fedmirasol.privacy.budget import EXHAUSTED, budget_exhausted
from fedmirasol.privacy.round_figures import aggregates_only, dp_round_figures

EXHAUSTED_FIELD = "budget_exhausted"  # metrics.jsonl: partitions that replied "exhausted"
CLIP_SLACK = 1e-5  # float32 rounding of a clipped update's norm
log = logging.getLogger("fedmirasol.server")


def _dp_metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Why a reply's ``dp-*`` figures cannot go to the ledger (None: they can)."""
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if key.startswith("dp-") and any(isinstance(v, (int, float)) and not math.isfinite(v)
                                         for v in values):
            return f"metric {key!r} is {value}"
    return None


def _metrics(reply: Message) -> Mapping[str, Any]:
    return reply.content.metric_records["metrics"]


class ServerPrivacy:
    """Privacy bookkeeping of one run (fresh or resumed) on the server."""

    def __init__(self, config: RunConfig, run_dir: Any,
                 trainable: Iterable[str]) -> None:
        """`trainable`: the shared names of trainable parameters, the only entries that
        client-level DP updates (and noises); buffers such as the mel filterbank keep their
        global value."""
        self.settings = config.privacy
        self.run_dir = run_dir
        self.trainable = frozenset(trainable)
        self.num_clients = int(config.data.num_clients)
        self.exhausted: set[int] = set()
        self.client_level = (ClientLevelAccountant(self.num_clients, self.settings.delta)
                             if self.settings.client_level else None)

    @property
    def active(self) -> bool:
        return self.settings.enabled or self.settings.client_level

    def resume(self, rounds: Iterable[Mapping[str, Any]], last_round: int) -> None:
        """Restore the state after `last_round` from metrics.jsonl records and the ledger."""
        for record in rounds:
            self.exhausted.update(int(p) for p in record.get(EXHAUSTED_FIELD, []))
        if self.client_level is None or not ledger.ledger_path(self.run_dir).is_file():
            return
        for record in ledger.read_all(self.run_dir):  # every release, repeated rounds too
            if record["kind"] == "client-level":
                self.client_level.record_round(record["noise-multiplier"],
                                               record["sampled-clients"], record["num-clients"])

    def evaluation_keys(self) -> tuple[str, ...]:
        """The metrics an evaluation reply must carry: under DP only its partition id (a
        client releases noised sums, figures of a public split, or nothing)."""
        return ("partition-id",) if self.active else EVALUATE_KEYS

    def round_figures(self, train_rows: Mapping[int, Mapping[str, float]],
                      eval_rows: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
        """Under DP-SGD the round's figures from the clients' noised sums (what the record's
        train loss and federated accuracy then are); nothing to change otherwise."""
        if not self.settings.enabled:
            return {}
        return dp_round_figures(train_rows, eval_rows)

    def recorded(self, record: dict[str, Any]) -> dict[str, Any]:
        """The round record as the run directory keeps it: under client-level DP only
        aggregates, unless privacy.keep-client-rows."""
        if self.client_level is None or self.settings.keep_client_rows:
            return record
        return aggregates_only(record)

    def eligible(self, partitions: Mapping[int, int]) -> dict[int, int]:
        """{node: partition} of the nodes that may still train (budget not exhausted)."""
        return {node: pid for node, pid in partitions.items() if pid not in self.exhausted}

    @staticmethod
    def claims_exhausted(reply: Message) -> bool:
        """Whether a reply says "budget exhausted"."""
        return not reply.has_error() and "metrics" in reply.content.metric_records \
            and budget_exhausted(_metrics(reply))

    @classmethod
    def exhausted_problem(cls, reply: Message) -> str | None:
        """Why a reply that says "budget exhausted" is malformed (None: it is well-formed, or
        says no such thing). Such a reply carries no update (``arrays``); under secure
        aggregation its masked vector encodes nothing (zero, weight zero)."""
        if not cls.claims_exhausted(reply):
            return None
        reason = check_metrics(reply.content, ("partition-id", EXHAUSTED, "dp-epsilon"))
        if reason is None and "arrays" in reply.content.array_records:
            reason = "a client out of budget must not send an update"
        return reason

    def take_exhausted(self, replies: list[Message], partitions: Mapping[int, int]
                       ) -> tuple[list[Message], list[Message], list[Rejection]]:
        """(other replies, well-formed "exhausted" replies, malformed ones as rejections)."""
        rest, exhausted, rejected = [], [], []
        for reply in replies:
            if not self.claims_exhausted(reply):
                rest.append(reply)
                continue
            reason = self.exhausted_problem(reply)
            if reason is None:
                exhausted.append(reply)
                self.exhausted.add(int(_metrics(reply)["partition-id"]))
            else:
                rejected.append(Rejection(reply.metadata.src_node_id,
                                          reply_partition(reply, partitions), reason))
        return rest, exhausted, rejected

    def _ledger_record(self, server_round: int, metrics: Mapping[str, Any]
                       ) -> tuple[dict[str, Any] | None, str | None]:
        """A reply's ledger record, or why its DP figures cannot make one."""
        if "dp-epsilon" not in metrics or "partition-id" not in metrics:
            return None, "the reply carries no DP figures ('dp-epsilon') while privacy.enabled"
        problem = _dp_metrics_problem(metrics)
        if problem is not None:
            return None, problem
        try:
            return ledger.client_record(server_round, int(metrics["partition-id"]), metrics,
                                        self.settings.accountant), None
        except (TypeError, ValueError) as error:
            return None, str(error)

    def record_clients(self, server_round: int, replies: Iterable[Message]) -> None:
        """Ledger records of every reply that carries usable DP figures (accepted or not: the
        spend happened); the others are named in the log (their updates are rejected by
        `check_reported`)."""
        if not self.settings.enabled:
            return
        records = []
        for reply in replies:
            if reply.has_error() or "metrics" not in reply.content.metric_records:
                continue
            metrics = dict(_metrics(reply))
            record, problem = self._ledger_record(server_round, metrics)
            if record is not None:
                records.append(record)
            elif "dp-epsilon" in metrics:
                log.warning("round %d: DP figures of node %s (partition %r) not recorded: %s",
                            server_round, reply.metadata.src_node_id,
                            metrics.get("partition-id"), problem)
        ledger.append(self.run_dir, records)

    def record_evaluations(self, server_round: int, replies: Iterable[Message]) -> None:
        """Ledger records of the evaluation replies that charged the client's accountant
        (DP evaluation, DP local adaptation)."""
        if not self.settings.enabled:
            return
        records = []
        for reply in replies:
            metrics = dict(_metrics(reply)) if "metrics" in reply.content.metric_records else {}
            if "dp-epsilon" not in metrics or "partition-id" not in metrics \
                    or _dp_metrics_problem(metrics) is not None:
                continue
            try:
                records.append(ledger.client_record(
                    server_round, int(metrics["partition-id"]), metrics,
                    self.settings.accountant, kind="client-evaluation"))
            except (TypeError, ValueError) as error:
                log.warning("round %d: DP evaluation figures of partition %r not recorded: %s",
                            server_round, metrics.get("partition-id"), error)
        ledger.append(self.run_dir, records)

    def reported_problem(self, server_round: int, reply: Message) -> str | None:
        """Under DP-SGD, why the ledger cannot record a reply's DP figures (missing or
        malformed); None when it can, or without DP-SGD."""
        if not self.settings.enabled:
            return None
        metrics = dict(_metrics(reply)) if "metrics" in reply.content.metric_records else {}
        return self._ledger_record(server_round, metrics)[1]

    def check_reported(self, server_round: int, replies: list[Message],
                       partitions: Mapping[int, int]) -> tuple[list[Message], list[Rejection]]:
        """Under DP-SGD, reject updates the ledger cannot cover (`reported_problem`): nothing
        is aggregated whose privacy spend is not on record."""
        if not self.settings.enabled:
            return replies, []
        accepted, rejected = [], []
        for reply in replies:
            problem = self.reported_problem(server_round, reply)
            if problem is None:
                accepted.append(reply)
            else:
                rejected.append(Rejection(reply.metadata.src_node_id,
                                          reply_partition(reply, partitions), problem))
        return accepted, rejected

    def check_clipped(self, replies: list[Message], partitions: Mapping[int, int]
                      ) -> tuple[list[Message], list[Rejection]]:
        """Under client-level DP, reject updates whose L2 norm exceeds the clip bound; one
        within float32 rounding slack above it is clipped to it, so the sum's sensitivity is
        exactly the clip norm the noise and the accountant assume."""
        if self.client_level is None:
            return replies, []
        bound = self.settings.client_clip_norm * (1 + CLIP_SLACK)
        accepted, rejected = [], []
        for reply in replies:
            update = from_record(reply.content.array_records["arrays"])
            norm = get_norm(list(update.values()))
            if norm <= bound:
                if norm > self.settings.client_clip_norm:  # within the float32 slack: clip it
                    clipped, _ = clip_update(update, self.settings.client_clip_norm)
                    reply.content.array_records["arrays"] = to_record(clipped)
                accepted.append(reply)
            else:
                rejected.append(Rejection(
                    reply.metadata.src_node_id, reply_partition(reply, partitions),
                    f"update norm {norm:.6g} exceeds privacy.client-clip-norm "
                    f"{self.settings.client_clip_norm:g}"))
        return accepted, rejected

    def aggregate(self, server_round: int, accepted: list[Message],
                  global_shared: NumpyState, num_sampled: int, population: int) -> NumpyState:
        """Client-level DP: global + (sum of clipped updates / sampled + noise) on the
        trainable parameters; accounted.

        Dividing by the number sampled (not the number that replied) keeps the release the
        analysed mechanism: a missing client counts as a zero update.
        """
        assert self.client_level is not None
        total = {name: np.zeros(np.shape(value), dtype=np.float64)
                 for name, value in global_shared.items() if name in self.trainable}
        for reply in accepted:
            update = from_record(reply.content.array_records["arrays"])
            for name in total:
                total[name] += update[name]
        mean = {name: value / num_sampled for name, value in total.items()}
        # accounted (and on record) before the noised model exists
        self.account_client_level(server_round, num_sampled, population)
        noised = noise_aggregate(mean, clip_norm=self.settings.client_clip_norm,
                                 noise_multiplier=self.settings.client_noise_multiplier,
                                 num_sampled=num_sampled)
        return {name: (global_shared[name].astype(np.float64) + noised[name])
                .astype(global_shared[name].dtype)
                if name in noised else global_shared[name] for name in global_shared}

    def account_client_level(self, server_round: int, num_sampled: int, population: int
                             ) -> float:
        """Compose one client-level release of `num_sampled` clients drawn from `population`
        (noise multiplier `privacy.client-noise-multiplier` on the sum of the clipped updates)
        in the accountant and the ledger; the run's cumulative epsilon. Under homomorphic
        encryption the clients add that noise themselves, in shares (`fedmirasol.he`)."""
        assert self.client_level is not None
        epsilon = self.client_level.record_round(self.settings.client_noise_multiplier,
                                                 num_sampled, population)
        ledger.append(self.run_dir, [ledger.client_level_record(
            server_round, epsilon=epsilon, delta=self.settings.delta,
            noise_multiplier=self.settings.client_noise_multiplier,
            clip_norm=self.settings.client_clip_norm, num_sampled=num_sampled,
            num_clients=population)])
        return epsilon
