"""The server's step under homomorphic encryption as the ClientApp carries it: imported at its
first use.

`ServerStepOnClients` comes with the server's aggregator stack (Opacus's accountants
included), seconds of imports in every process that unpickles the ClientApp (a simulation's
virtual-client processes, before their first message). A client runs the step only under
`he.enabled`, so the app holds this stand-in, which imports the step when a client first
calls it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Mapping

import numpy as np

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState

if TYPE_CHECKING:
    from fedmirasol.he.packing import Layout
    from fedmirasol.runs.run_dir import StrategyState
    from fedmirasol.server.aggregators.he_step import ServerStepOnClients


@functools.lru_cache(maxsize=1)
def _server_step() -> ServerStepOnClients:
    from fedmirasol.server.aggregators.he_step import ServerStepOnClients

    return ServerStepOnClients()


class DeferredServerStep:
    """`fedmirasol.client.he.ServerStep`, delegating to `ServerStepOnClients` imported on the
    first call (pickles as a reference to this class: nothing of the server's stack)."""

    def initial_state(self, config: RunConfig, model: NumpyState) -> StrategyState:
        return _server_step().initial_state(config, model)

    def segments(self, config: RunConfig, model: NumpyState, state: StrategyState,
                 update: NumpyState) -> tuple[Layout, dict[str, Mapping[str, np.ndarray]]]:
        return _server_step().segments(config, model, state, update)

    def step(self, config: RunConfig, server_round: int, layout: Layout,
             means: Mapping[str, Mapping[str, np.ndarray]]
             ) -> tuple[NumpyState, StrategyState]:
        return _server_step().step(config, server_round, layout, means)
