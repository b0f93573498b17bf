"""The attacks on the update, each a function of the attacker's round.

- sign-flip: ``-scale x update`` (the update pushed the other way);
- scale: ``scale x update`` (model replacement, Bagdasaryan et al. 2020: with ``scale`` about
  the number of clients over the server learning rate the attacker's model replaces the
  global one); label-flip and backdoor send their poisoned update this way too;
- gaussian: ``N(0, noise-std^2)`` noise of the update's shapes, nothing learned;
- little-is-enough (Baruch et al. 2019): ``mean - z x std`` per value, over the colluding
  attackers' benign updates. The attackers estimate the honest clients' mean and spread from
  their own benign updates, as in the paper: each attacker trains (or, in a simulation,
  recomputes from the run config) the honest update of every colluder, so all of them send
  the same value, which stays within the honest updates' spread for z up to z_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState
from fedmirasol.core.seeds import seed_for

GAUSSIAN_STREAM = 0xA77  # seeds the gaussian attack's noise apart from training


@dataclass(frozen=True)
class AttackRound:
    """What an attacker knows in a round."""

    config: RunConfig
    partition_id: int
    server_round: int
    update: NumpyState  # the update it trained (on poisoned data for a data attack)
    colluders: Callable[[], list[NumpyState]]  # every colluder's benign update, its own first

    @property
    def factor(self) -> float:
        return self.config.attack.factor(self.config.data.num_clients)


def sign_flip(r: AttackRound) -> NumpyState:
    return {name: (-r.factor * value).astype(value.dtype) for name, value in r.update.items()}


def scaled(r: AttackRound) -> NumpyState:
    return {name: (r.factor * value).astype(value.dtype) for name, value in r.update.items()}


def gaussian(r: AttackRound) -> NumpyState:
    config = r.config
    rng = np.random.default_rng(seed_for(config.seed, r.server_round, r.partition_id,
                                         GAUSSIAN_STREAM))
    std = config.attack.noise_std
    return {name: rng.normal(0.0, std, value.shape).astype(value.dtype)
            for name, value in r.update.items()}


def clients_per_round(config: RunConfig) -> int:
    """How many clients Flower samples a round (max(int(n x fraction), min-train-nodes))."""
    strategy, n = config.strategy, config.data.num_clients
    return min(n, max(int(n * strategy.fraction_train), strategy.min_train_nodes))


def little_is_enough(r: AttackRound) -> NumpyState:
    config = r.config
    benign = r.colluders()
    attackers = len(config.attack.attackers(config.data.num_clients, config.seed))
    z = config.attack.z_for(clients_per_round(config), attackers)
    out: NumpyState = {}
    for name, value in r.update.items():
        stacked = np.stack([update[name] for update in benign]).astype(np.float64)
        out[name] = (stacked.mean(axis=0) - z * stacked.std(axis=0)).astype(value.dtype)
    return out


UPDATE_ATTACKS: dict[str, Callable[[AttackRound], NumpyState]] = {
    "sign-flip": sign_flip,
    "scale": scaled,
    "gaussian": gaussian,
    "little-is-enough": little_is_enough,
    "label-flip": scaled,
    "backdoor": scaled,
}
