"""Plain aggregation: every update in the clear to the server, combined by the Flower
strategy's rule (FedAvg, FedProx, FedAdam, robust means, ...)."""

from __future__ import annotations

import numpy as np
from flwr.app import Message
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedmirasol.core.parameters import NumpyState, apply_delta, from_record, to_record
from fedmirasol.server.aggregators.base import Aggregator, Run, TrainOutcome
from fedmirasol.core.reply_checks import ArrayChecks, Rejection
from fedmirasol.server.exchange import destinations, missing
from fedmirasol.server.filters import Screening, screen


def _to_weights(replies: list[Message], global_shared: NumpyState) -> None:
    """Turn each accepted update (a delta) into weights, in place, for the strategy."""
    for reply in replies:
        update = from_record(reply.content.array_records["arrays"])
        reply.content["arrays"] = to_record(apply_delta(global_shared, update))


# Flower's strategies whose aggregate moves with its inputs: a weighted mean (FedAvg, FedProx),
# order statistics (trimmed mean, median) or a choice by pairwise distances (Krum, MultiKrum,
# Bulyan), so aggregate(model + update_i) == model + aggregate(update_i). They aggregate the
# updates as they arrived, without first turning each into weights (one decode and one encode
# of every reply's arrays less a round). The server optimizers (FedAdam, FedAvgM, ...) keep
# their own copy of the model and get weights. Exact types: those subclass FedAvg.
AGGREGATE_UPDATES = (FedAvg, FedProx, FedTrimmedAvg, FedMedian, Krum, MultiKrum, Bulyan)


def strategy_step(strategy: Strategy, server_round: int, accepted: list[Message],
                  global_shared: NumpyState, ahead: ArrayChecks | None = None
                  ) -> tuple[NumpyState, str | None]:
    """The strategy's aggregate, or the unchanged global model and the reason it was kept
    (`ahead`: the updates decoded as their replies arrived)."""
    if not accepted:
        return global_shared, "no accepted updates"
    if type(strategy) in AGGREGATE_UPDATES:
        zero = {name: np.zeros_like(value, np.float32) for name, value in global_shared.items()}
        decoded = _decoded_for_mean(strategy, accepted, ahead)
        if decoded is not None:
            combined, reason = _checked(weighted_mean(*decoded), zero)
        else:
            combined, reason = aggregate_weights(strategy, server_round, accepted, zero)
        if reason is not None:
            return global_shared, reason
        return apply_delta(global_shared, combined), None
    _to_weights(accepted, global_shared)
    return aggregate_weights(strategy, server_round, accepted, global_shared)


def aggregate_weights(strategy: Strategy, server_round: int, replies: list[Message],
                      global_shared: NumpyState) -> tuple[NumpyState, str | None]:
    """The strategy's aggregate of replies that carry models (not updates), checked; in the
    dtypes of `global_shared`."""
    try:
        arrays, _ = strategy.aggregate_train(server_round, replies)
    except Exception as error:  # a strategy that cannot aggregate must not end the run
        return global_shared, f"aggregation failed: {type(error).__name__}: {error}"
    if arrays is None:
        return global_shared, "the strategy returned no aggregate"
    return _checked(from_record(arrays), global_shared)


def _checked(new: NumpyState, global_shared: NumpyState) -> tuple[NumpyState, str | None]:
    """An aggregate with the keys of `global_shared`, finite, in its dtypes; or
    `global_shared` and why the aggregate was not used."""
    if set(new) != set(global_shared):
        return global_shared, "aggregate keys differ from the global model's"
    bad = [k for k, v in new.items() if not np.isfinite(v).all()]
    if bad:
        return global_shared, f"aggregate holds NaN/Inf in {bad[0]!r}"
    return {k: new[k].astype(global_shared[k].dtype) for k in global_shared}, None


def _decoded_for_mean(strategy: Strategy, accepted: list[Message], ahead: ArrayChecks | None
                      ) -> tuple[list[NumpyState], list[float]] | None:
    """For FedAvg and FedProx (whose aggregate is the weighted mean): the accepted updates as
    they were decoded on arrival, and their weights, read as Flower's strategy reads them;
    None where one was not kept decoded, or a reply is not as the strategy expects (its own
    aggregate then decodes them, or names the problem)."""
    if ahead is None or type(strategy) not in (FedAvg, FedProx):
        return None
    key = strategy.weighted_by_key
    updates, weights = [], []
    for reply in accepted:
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return None
        metrics = next(iter(content.metric_records.values()))
        update = ahead.decoded(next(iter(content.array_records.values())))
        if update is None or key not in metrics:
            return None
        updates.append(update)
        weights.append(metrics[key])
    return updates, weights


def weighted_mean(updates: list[NumpyState], weights: list[float]) -> NumpyState:
    """The weighted mean of `updates`, computed as Flower's FedAvg computes it
    (`flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`: each update times its
    share of the total weight, summed in order), so that both give the same bits."""
    total = sum(weights)
    shares = [weight / total for weight in weights]
    mean: dict[str, np.ndarray] = {}
    for update, share in zip(updates, shares, strict=True):
        for key, values in update.items():
            if key not in mean:
                mean[key] = values * share
            else:
                mean[key] += values * share
    return mean


class StrategyMean(Aggregator):
    """Every update in the clear to the server, through the reply filters, combined by the
    Flower strategy. Subclasses change only how the accepted updates move the model
    (`step`)."""

    name = "strategy"
    takes_sum = False  # under secure aggregation, `step` gets the survivors' mean, not sum

    def train(self, run: Run, server_round: int, messages: list[Message],
              population: int) -> TrainOutcome:
        replies = self.exchange(run, server_round, "train", messages)
        usable, unreadable = self.readable(run, replies)
        s = screen(run.filters, Screening(server_round, usable, run.partitions,
                                          destinations(messages), kept=list(usable)))
        rejected = unreadable + s.rejected + missing(messages, replies, run.partitions,
                                                     run.timeout)
        new, kept_reason = self.step(run, server_round, s.kept, len(messages), population)
        if run.ahead is not None:
            run.ahead.clear()  # the decoded updates are in the aggregate now
        return TrainOutcome(s.kept, s.exhausted, rejected, new, kept_reason, figures=s.notes)

    def readable(self, run: Run, replies: list[Message]
                 ) -> tuple[list[Message], list[Rejection]]:
        """The replies the reply filters can read (all of them: updates travel as float32
        deltas), and why the others cannot be read."""
        return replies, []

    def step(self, run: Run, server_round: int, accepted: list[Message],
             num_sampled: int, population: int) -> tuple[NumpyState, str | None]:
        """The new global shared state from the accepted updates (under secure aggregation:
        one reply holding their mean or sum), and why the previous one was kept, if it was."""
        return strategy_step(run.strategy, server_round, accepted, run.global_shared, run.ahead)
