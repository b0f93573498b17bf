"""Secure aggregation (SecAgg+, fedmirasol.secagg): the server learns only the sum of the
masked updates; the sum then moves the model through the plain step (the strategy's rule on
the mean, or client-level DP's noise on the sum). Federated evaluation is summed securely."""

from __future__ import annotations

from flwr.app import Message

from fedmirasol.secagg.server import SecureAggregator, mean_reply
from fedmirasol.server.aggregators.base import Aggregator, Run, TrainOutcome
from fedmirasol.server.aggregators.mean import StrategyMean
from fedmirasol.server.federated_evaluation import EVALUATION_FIGURES, EvaluationOutcome, from_sums
from fedmirasol.server.filters import Screening, masked_check, screen_masked


class SecureMean(Aggregator):
    """The reply filters apply as far as masked replies allow: before unmasking, a reply a
    filter refuses (a malformed "budget exhausted" reply, DP figures the ledger cannot record)
    stays out of the sum; after it, every survivor's DP figures go to the ledger and a client
    out of budget (it said so instead of sending keys, so it took no part in the protocol) is
    recorded as exhausted. The round's train loss is the secure weighted mean over the
    contributors, and federated evaluation is secure sums too (`evaluate`)."""

    name = "secagg"

    def __init__(self, protocol: SecureAggregator, step: StrategyMean) -> None:
        self.protocol = protocol
        self.mean = step  # how the secure sum moves the model

    def train(self, run: Run, server_round: int, messages: list[Message],
              population: int) -> TrainOutcome:
        secure = self.protocol.run(run.ordered, messages, run.timeout, server_round,
                                   run.partitions,
                                   screen=masked_check(run.filters, server_round))
        run.traffic.add(secure.traffic)
        run.check_registered(secure.replies)
        s = screen_masked(run.filters, Screening(server_round, secure.replies, run.partitions,
                                                 {}, kept=list(secure.replies)))
        if secure.failure is not None:
            return TrainOutcome(s.kept, s.exhausted, secure.rejections, run.global_shared,
                                secure.failure)
        new, kept_reason = self.mean.step(
            run, server_round, [mean_reply(secure, messages[0], self.mean.takes_sum)],
            len(messages), population)
        return TrainOutcome(s.kept, s.exhausted, secure.rejections, new, kept_reason,
                            train_loss=secure.train_loss)

    def evaluate(self, run: Run, server_round: int, messages: list[Message]
                 ) -> EvaluationOutcome:
        """Federated evaluation as secure sums: the server learns the example count, losses
        and accuracies summed over the clients, never one client's."""
        if not messages:  # nobody asked to evaluate (strategy.fraction-evaluate = 0)
            return from_sums(None, [], None)
        secure = self.protocol.evaluate(run.ordered, messages, run.timeout, server_round,
                                        EVALUATION_FIGURES, run.partitions)
        run.traffic.add(secure.traffic)
        run.check_registered(secure.replies)
        return from_sums(secure.sums, secure.rejections, secure.failure)
