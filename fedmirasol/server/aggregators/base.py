"""The interface every aggregator has: one round's training, from messages to a new model, and
its federated evaluation, from messages to the round's figures."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmirasol.config.run import RunConfig
from fedmirasol.core.metrics import Traffic
from fedmirasol.core.parameters import NumpyState
from fedmirasol.core.reply_checks import ArrayChecks, Rejection, validate_evaluate_replies
from fedmirasol.server.exchange import (destinations, in_partition_order, missing,
                                        send_and_receive)
from fedmirasol.server.federated_evaluation import EvaluationOutcome, in_clear

if TYPE_CHECKING:
    from fedmirasol.privacy.server_side import ServerPrivacy
    from fedmirasol.server.filters import ReplyFilter


class Run(Protocol):
    """What an aggregator uses of the run it serves (`fedmirasol.server.loop.FederatedRun`)."""

    config: RunConfig
    grid: Grid
    ordered: Grid  # the grid that addresses nodes in partition order
    timeout: float  # seconds a stage waits for replies
    partitions: Mapping[int, int]  # node -> partition
    strategy: Strategy
    global_shared: NumpyState  # the current global shared parameters
    privacy: ServerPrivacy
    filters: list[ReplyFilter]  # the run's reply-filter chain
    traffic: Traffic  # the round's bytes on the wire, per node
    ahead: ArrayChecks | None  # train replies' updates checked (and decoded) as they arrive

    def watch(self, server_round: int, phase: str, messages: list[Message]
              ) -> Callable[[Message], None] | None:
        """The per-reply progress callback for `messages`, if the run has one."""

    def check_registered(self, replies: list[Message]) -> None:
        """Stop the run if replies contradict the partitions taken from node registration."""


@dataclass
class TrainOutcome:
    """What a round's training produced."""

    accepted: list[Message]  # the replies whose updates went into the new model
    exhausted: list[Message]  # clients out of their DP budget (trained nothing)
    rejected: list[Rejection]
    global_shared: NumpyState  # the new global shared parameters
    kept_reason: str | None  # why the previous model was kept, if it was
    # the accepted clients' mean train loss when the replies do not show it (a secure sum)
    train_loss: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # more for the round's record


class Aggregator(ABC):
    """Sends a round's train messages, screens the replies (the run's reply filters) and
    moves the global model.

    Chosen once per run (`fedmirasol.server.aggregators.choose_aggregator`); the round loop
    calls `train` every round and never branches on how the updates are combined.
    """

    name: ClassVar[str]  # its key in `AGGREGATORS`

    @abstractmethod
    def train(self, run: Run, server_round: int, messages: list[Message],
              population: int) -> TrainOutcome:
        """`messages` were built by the strategy for the clients drawn from `population`."""

    def exchange(self, run: Run, server_round: int, phase: str, messages: list[Message]
                 ) -> list[Message]:
        """Send `messages` of `phase` ("train"/"evaluate") and collect the replies in partition
        order (not arrival order: the run is then the same however the clients are
        scheduled), counting the bytes both ways in `run.traffic`.

        Where replies arrive one by one (Flower's Grids), the work each needs is done as it
        arrives, while later clients still work: its bytes are counted and (train replies)
        its update's arrays are checked and decoded (`run.ahead`, which the reply filters
        and the aggregate reuse); the round then waits only for the last reply's share. The
        messages themselves are not touched before the exchange is over (the engine may be
        serializing them on its own threads meanwhile)."""
        count = run.traffic.counting(messages)
        watch = run.watch(server_round, phase, messages)
        ahead = run.ahead if phase == "train" else None
        if ahead is not None:
            ahead.clear()  # (what an earlier round left)

        def arrived(reply: Message) -> None:
            if watch is not None:
                watch(reply)
            count.reply(reply)
            if ahead is not None and not reply.has_error():
                ahead.check(reply.content)

        replies = in_partition_order(send_and_receive(run.grid, messages, run.timeout, arrived),
                                     run.partitions)
        count.finish()
        run.check_registered(replies)
        return replies

    def evaluate(self, run: Run, server_round: int, messages: list[Message]
                 ) -> EvaluationOutcome:
        """Federated evaluation of the new global model (`messages`: the strategy's evaluate
        messages): by default every client's figures, in the clear."""
        replies = self.exchange(run, server_round, "evaluate", messages)
        accepted, rejected = validate_evaluate_replies(
            replies, run.partitions, destinations(messages), run.config.strategy.max_num_examples,
            run.privacy.evaluation_keys())
        run.privacy.record_evaluations(server_round, accepted)
        return in_clear(accepted, rejected + missing(messages, replies, run.partitions,
                                                     run.timeout))

    def final_model(self, run: Run) -> NumpyState | None:
        """The final global shared parameters in the clear, or None where the server cannot
        read them (homomorphic encryption: the last checkpoint keeps the encrypted state)."""
        return run.global_shared
