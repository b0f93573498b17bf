"""The interface every aggregator has: one round's training, from messages to a new model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmirasol.core.parameters import NumpyState
from fedmirasol.core.reply_checks import Rejection

if TYPE_CHECKING:
    from fedmirasol.privacy.server_side import ServerPrivacy
    from fedmirasol.server.filters import ReplyFilter


class Run(Protocol):
    """What an aggregator uses of the run it serves (`fedmirasol.server.loop.FederatedRun`)."""

    grid: Grid
    ordered: Grid  # the grid that addresses nodes in partition order
    timeout: float  # seconds a stage waits for replies
    partitions: Mapping[int, int]  # node -> partition
    strategy: Strategy
    global_shared: NumpyState  # the current global shared parameters
    privacy: ServerPrivacy
    filters: list[ReplyFilter]  # the run's reply-filter chain

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
    bytes_up: int
    global_shared: NumpyState  # the new global shared parameters
    kept_reason: str | None  # why the previous model was kept, if it was
    # the accepted clients' mean train loss when the replies do not show it (a secure sum)
    train_loss: float | None = None


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
