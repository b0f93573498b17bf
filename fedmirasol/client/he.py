"""The client's side of homomorphic encryption (fedmirasol.he): open the server's encrypted
global state, seal the update.

A train or evaluate message of an HE run carries the initial model in the clear (round 1) or
the encrypted sum of the last round's replies. The client decrypts the sum with its site's
secret context and runs the server's step on the means (`ServerStep`, implemented by
`fedmirasol.server.aggregators.he_step.ServerStepOnClients`): that gives the global model it
trains or evaluates. Its update leaves through the release point sealed: the proposed model
(global plus update) weighted by the example count, and the strategy state, encrypted.

The site's secret context: its node config's ``he-secret-context`` (the site file of
`fedmirasol he-keys`), or in a simulation the file the harness made for every virtual client.
A decrypted state is kept for the next message that carries the same one (a client evaluates,
then trains from the same sum).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from fedmirasol.client.handlers import Opened, plain_global
from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState, from_record
from fedmirasol.he.errors import DecryptionFailed
from fedmirasol.he.packing import Layout
from fedmirasol.he.wire import SAMPLED_KEY, is_encrypted, read_header
from fedmirasol.runs.run_dir import StrategyState

if TYPE_CHECKING:
    from fedmirasol.he.ckks import SiteContext

SECRET_NODE_KEY = "he-secret-context"


class ServerStep(Protocol):
    """The server's step, as the clients run it on the decrypted means."""

    def initial_state(self, config: RunConfig, model: NumpyState) -> StrategyState: ...

    def segments(self, config: RunConfig, model: NumpyState, state: StrategyState,
                 update: NumpyState) -> tuple[Layout, dict[str, Mapping[str, np.ndarray]]]: ...

    def step(self, config: RunConfig, server_round: int, layout: Layout,
             means: Mapping[str, Mapping[str, np.ndarray]]
             ) -> tuple[NumpyState, StrategyState]: ...


_opened: dict[tuple[Any, ...], tuple[NumpyState, StrategyState]] = {}


def site_context(context: Context, provisioned: str | None) -> SiteContext:
    from fedmirasol.he.keyfiles import cached_site  # SEAL: only under HE

    path = context.node_config.get(SECRET_NODE_KEY, provisioned)
    if not path:
        raise ValueError(f"homomorphic encryption needs this site's secret context: start the "
                         f"SuperNode with --node-config '{SECRET_NODE_KEY}=\"he-site.ckks\"' "
                         "(the site file of `fedmirasol he-keys`)")
    return cached_site(str(path))


@dataclass(frozen=True)
class HEOpener:
    """The `Opener` of the app's train and evaluate handlers (plain runs pass through)."""

    step: ServerStep
    provisioned: str | None = None  # a simulation's site context file

    def __call__(self, message: Message, context: Context, config: RunConfig) -> Opened:
        if not config.he.enabled:
            return plain_global(message, context, config)
        site = site_context(context, self.provisioned)
        arrays = message.content.array_records["arrays"]
        if is_encrypted(arrays):
            model, state = self.open_state(site, config, arrays)
        else:  # round 1: the initial model
            model = from_record(arrays)
            state = self.step.initial_state(config, model)
        record = message.content.config_records.get("config", {})
        contributors = int(record.get(SAMPLED_KEY, config.data.num_clients))
        return Opened(model, functools.partial(self._seal, site, config, model, state,
                                               contributors))

    def open_state(self, site: SiteContext, config: RunConfig, arrays: Mapping[str, Any]
                   ) -> tuple[NumpyState, StrategyState]:
        """The global model and strategy state an encrypted state decrypts to."""
        try:
            key = (site.key_id, read_header(arrays).state_id, config)
        except ValueError as error:
            raise DecryptionFailed(f"the encrypted state is malformed: {error}") from None
        if key not in _opened:
            from fedmirasol.he import codec

            header, sums = codec.decrypt(site, arrays, config.he.min_contributors)
            _opened.clear()
            _opened[key] = self.step.step(config, header.round, header.layout, sums.segments)
        return _opened[key]

    def _seal(self, site: SiteContext, config: RunConfig, model: NumpyState,
              state: StrategyState, contributors: int, update: NumpyState, num_examples: int
              ) -> ArrayRecord:
        from fedmirasol.he import codec

        layout, values = self.step.segments(config, model, state, update)
        return ArrayRecord(codec.encrypt(site, layout, values, float(num_examples),
                                         config.he.batch_ciphertexts, contributors, into=Array))
