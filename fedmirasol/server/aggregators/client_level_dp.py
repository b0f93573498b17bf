"""Client-level DP: the equal-weight mean of the clipped updates of the clients drawn, with
Gaussian noise, accounted in the privacy ledger (fedmirasol.privacy.server_side), instead of
the strategy's rule. Written here rather than with Flower's DP wrappers, which refuse the
sampling amplification its accounting counts on."""

from __future__ import annotations

from flwr.app import Message

from fedmirasol.core.parameters import NumpyState
from fedmirasol.server.aggregators.base import Run
from fedmirasol.server.aggregators.mean import StrategyMean


class ClientLevelDPMean(StrategyMean):
    """The noised mean over the `num_sampled` clients drawn from `population` (a client
    that did not reply counts as a zero update, so the release is the analysed mechanism)."""

    name = "client-level-dp"
    takes_sum = True  # under secure aggregation the noise goes on the secure sum

    def step(self, run: Run, server_round: int, accepted: list[Message],
             num_sampled: int, population: int) -> tuple[NumpyState, str | None]:
        new = run.privacy.aggregate(server_round, accepted, run.global_shared,
                                    num_sampled=num_sampled, population=population)
        return new, None
