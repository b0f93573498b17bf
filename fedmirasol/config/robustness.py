"""The run config's ``[attack]`` and ``[defense]`` sections: simulated Byzantine clients and the
norm bound on updates (the robust aggregators themselves are `strategy.name`)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from fedmirasol.config.base import Section, partition_ids
from fedmirasol.errors import ConfigError

# Attacks on the update (fedmirasol.client.attacks) and on the data (fedmirasol.data.poisoning).
UPDATE_ATTACKS = ("sign-flip", "scale", "gaussian", "little-is-enough")
DATA_ATTACKS = ("label-flip", "backdoor")
ATTACKS = ("none", *UPDATE_ATTACKS, *DATA_ATTACKS)
TRIGGERS = ("video", "audio")
ATTACKER_SEED = 0xBAD  # the draw of `attack.fraction`'s attackers, apart from other streams


class AttackConfig(Section):
    """Byzantine clients for robustness experiments: the attackers (listed, or a fraction drawn
    with the run's seed) send a poisoned update from `from-round` on. They are marked in the
    run directory and never asked to evaluate, so every federated figure is over honest
    clients only."""

    kind: Literal[ATTACKS] = "none"  # type: ignore[valid-type]
    clients: str = ""  # comma-separated partition ids of the attackers
    fraction: float = Field(0.0, ge=0.0, lt=1.0)  # or this fraction of data.num-clients
    from_round: int = Field(1, ge=1)  # first round the attackers attack
    # The factor on the attacker's update (0: the kind's own): sign-flip sends -scale x its
    # update (own: 1), scale sends scale x its update (own: data.num-clients, model
    # replacement), label-flip and backdoor scale their poisoned update (own: 1, plain poisoning)
    scale: float = Field(0.0, ge=0.0)
    # gaussian: the update is N(0, noise-std^2) noise (std 0.1 by 2 of 10 clients did not
    # measurably hurt FedAvg in 20 rounds of the default config; 1 did: benchmarks/README.md)
    noise_std: float = Field(1.0, gt=0.0)
    # little-is-enough: the update is mean - z x std of the colluders' benign updates per value
    # (0: Baruch et al.'s z_max for the round's clients and attackers)
    z: float = Field(0.0, ge=0.0)
    target_class: int = Field(0, ge=0)  # backdoor: what a clip with the trigger is labelled
    trigger: Literal[TRIGGERS] = "video"  # type: ignore[valid-type]  # backdoor: patch or tone
    poison_fraction: float = Field(0.5, gt=0.0, le=1.0)  # backdoor: share of clips stamped

    @model_validator(mode="after")
    def _check(self) -> "AttackConfig":
        listed = partition_ids(self.clients, "attack.clients")
        if listed and self.fraction:
            raise ConfigError("config keys 'attack.clients' and 'attack.fraction' both choose "
                              "the attackers: set one of them")
        if self.kind == "none" and (listed or self.fraction):
            raise ConfigError("attack.clients / attack.fraction name attackers but attack.kind "
                              "is 'none': set attack.kind")
        if self.kind != "none" and not (listed or self.fraction):
            raise ConfigError(f"attack.kind = {self.kind!r} needs attackers: set attack.clients "
                              "(partition ids) or attack.fraction")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def attackers(self, num_clients: int, seed: int) -> frozenset[int]:
        """The attackers' partition ids: `clients`, or round(`fraction` x num_clients) of them
        drawn with the run's seed (every process draws the same)."""
        if not self.enabled:
            return frozenset()
        if self.clients:
            return frozenset(partition_ids(self.clients, "attack.clients"))
        count = max(1, round(self.fraction * num_clients))
        rng = np.random.default_rng([seed, ATTACKER_SEED])
        return frozenset(int(pid) for pid in rng.choice(num_clients, count, replace=False))

    def attacks(self, partition_id: int, server_round: int, num_clients: int,
                seed: int) -> bool:
        """Whether client `partition_id` attacks in `server_round`."""
        return server_round >= self.from_round \
            and partition_id in self.attackers(num_clients, seed)

    def factor(self, num_clients: int) -> float:
        """The factor on the attacker's update (`scale`, or the kind's own)."""
        if self.scale:
            return self.scale
        return float(num_clients) if self.kind == "scale" else 1.0

    def z_for(self, clients: int, attackers: int) -> float:
        """`z`, or Baruch et al.'s z_max: the largest z for which the attackers' value still
        looks closer to the mean than s = floor(clients / 2 + 1) - attackers honest values."""
        if self.z:
            return self.z
        supporters = math.floor(clients / 2 + 1) - attackers
        quantile = (clients - supporters) / clients
        return NormalDist().inv_cdf(min(max(quantile, 0.5), 1 - 1e-6))


class DefenseConfig(Section):
    """Norm bounding of updates (Sun et al. 2019). With `norm-bound` every honest client clips
    its update to that L2 norm before it leaves (under secure aggregation: before masking),
    and on the plain path the server clips every reply to it as well; `median-norm-bound`
    clips every reply to the round's median update norm instead (plain path only: the server
    must see the updates). `root-clips`: the size of the server's own clean root data that
    `strategy.name = "fltrust"` trains its reference update on."""

    norm_bound: float = Field(0.0, ge=0.0)  # L2 bound of an update (0: off)
    median_norm_bound: bool = False
    root_clips: int = Field(100, ge=1)  # FLTrust's root data (Cao et al. use 100 examples)

    @model_validator(mode="after")
    def _check(self) -> "DefenseConfig":
        if self.norm_bound and self.median_norm_bound:
            raise ConfigError("config keys 'defense.norm-bound' and 'defense.median-norm-bound' "
                              "both set the bound: set one of them")
        return self
