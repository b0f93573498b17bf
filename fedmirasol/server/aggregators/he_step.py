"""The server's step under homomorphic encryption, run where the mean is decrypted: on the
clients (`fedmirasol.client.he` calls it; `fedmirasol.server.aggregators.he` is the server's
side).

For FedAvg, FedProx and FedBN the weighted mean of the proposed models (previous model plus
update) is the new model. FedAdam, FedYogi, FedAdagrad and FedAvgM are not linear in the
updates (their moments), so they cannot step on ciphertexts: every client runs Flower's own
step on the decrypted means, from the previous model and the optimizer state that every client
re-encrypts alike with its reply. Clients decrypt identical ciphertexts with one key, so all of
them start from the same model. Under client-level DP the clients add the noise, in shares.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState, apply_delta, to_record
from fedmirasol.he.packing import Layout, segment
from fedmirasol.privacy.client_level import noise_share_std
from fedmirasol.privacy.secure_noise import SecureNoise
from fedmirasol.runs.run_dir import StrategyState
from fedmirasol.server.aggregators.mean import aggregate_weights
from fedmirasol.server.strategy import build_strategy, restore_strategy_state, strategy_state
from fedmirasol.task.model import init_model, trainable_shared

PROPOSAL = "proposal"  # the weighted segment: each client's previous model plus its update
BASE, UPDATE = "base", "update"  # client-level DP's segments: the model, the noised update
SQRT_STATE = ("v_t",)  # second-moment estimates travel as square roots


@functools.lru_cache(maxsize=2)
def _trainable(config: RunConfig, shared: tuple[str, ...]) -> frozenset[str]:
    return frozenset(trainable_shared(init_model(config), shared))


def _gaussian(shape: tuple[int, ...], std: float) -> np.ndarray:
    """float64 N(0, std^2) from the CSPRNG DP noise comes from (`SecureNoise`)."""
    return SecureNoise().normal_array(shape, std)


def _configured(strategy: Strategy, model: NumpyState) -> None:
    """What Flower's `configure_train` does to a strategy's state: FedOpt-family strategies
    step from the model they sent; FedAvgM keeps its first one until it aggregates."""
    if isinstance(strategy, FedOpt):
        strategy.current_arrays = {name: np.array(value) for name, value in model.items()}
    elif isinstance(strategy, FedAvgM) and strategy.current_arrays is None:
        strategy.current_arrays = to_record(model)


def _step_reply(mean: NumpyState) -> Message:
    """One train reply holding the mean of the proposed models (weight 1), for the strategy's
    aggregate."""
    return Message(content=RecordDict({"arrays": to_record(mean),
                                       "metrics": MetricRecord({"num-examples": 1})}),
                   dst_node_id=0, message_type="train")


class ServerStepOnClients:
    """The server's step on the decrypted mean, run by the clients (the one place it is
    decrypted), exactly as `StrategyMean` runs it on a plain mean."""

    def initial_state(self, config: RunConfig, model: NumpyState) -> StrategyState:
        """The strategy's state as round 1's aggregation finds it (`model`: round 1's)."""
        strategy = build_strategy(config)
        _configured(strategy, model)
        return strategy_state(strategy)

    def segments(self, config: RunConfig, model: NumpyState, state: StrategyState,
                 update: NumpyState) -> tuple[Layout, dict[str, Mapping[str, np.ndarray]]]:
        """What a client encrypts: its proposal (`model` + `update`, weighted) and the
        strategy state it started from (alike on every client)."""
        if config.privacy.client_level:
            return self._client_level_segments(config, model, update)
        values: dict[str, Mapping[str, np.ndarray]] = {PROPOSAL: apply_delta(model, update)}
        parts = [segment(PROPOSAL, "weight", values[PROPOSAL])]
        for attr, (kind, names, arrays) in state.items():
            values[attr] = dict(zip(names, arrays))
            parts.append(segment(attr, "count", values[attr], kind,
                                 "sqrt" if attr in SQRT_STATE else "none"))
        return Layout(tuple(parts)), values

    @staticmethod
    def _client_level_segments(config: RunConfig, model: NumpyState, update: NumpyState
                               ) -> tuple[Layout, dict[str, Mapping[str, np.ndarray]]]:
        """Client-level DP, distributed: the model (alike everywhere) and the clipped update
        of the trainable parameters plus this client's share of the noise, summed and divided
        by the number of clients sampled (a client that did not answer is a zero update)."""
        privacy = config.privacy
        std = noise_share_std(privacy.client_clip_norm, privacy.client_noise_multiplier,
                              config.he.min_contributors)
        trainable = _trainable(config, tuple(model))
        noised = {name: np.asarray(update[name], np.float64) + _gaussian(update[name].shape, std)
                  for name in model if name in trainable}
        values = {BASE: model, UPDATE: noised}
        return Layout((segment(BASE, "count", model), segment(UPDATE, "sampled", noised))), values

    def step(self, config: RunConfig, server_round: int, layout: Layout,
             means: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[NumpyState, StrategyState]:
        """The new global model (float32, as the updates) and the strategy state its round
        starts from, from the decrypted means (float64) of `server_round`'s replies."""
        if UPDATE in means:  # client-level DP: the model plus the noised mean update
            new = {name: (value + means[UPDATE][name] if name in means[UPDATE] else value)
                   .astype(np.float32) for name, value in means[BASE].items()}
            return new, {}
        proposal = dict(means[PROPOSAL])
        state: StrategyState = {
            s.name: (s.kind, list(s.names), [np.asarray(means[s.name][n]) for n in s.names])
            for s in layout.segments if s.name != PROPOSAL}
        strategy = build_strategy(config)
        if not state:  # FedAvg, FedProx, FedBN: the weighted mean of the proposals
            new = proposal
        else:
            restore_strategy_state(strategy, state)
            previous = dict(zip(state["current_arrays"][1], state["current_arrays"][2]))
            new, reason = aggregate_weights(strategy, server_round, [_step_reply(proposal)],
                                            previous)
            if reason is not None:
                raise ValueError(f"the server step on the decrypted mean failed: {reason}")
        new = {name: value.astype(np.float32) for name, value in new.items()}
        _configured(strategy, new)
        return new, strategy_state(strategy)
