"""Simulated Byzantine clients: what an attacker sends in place of its honest update.

`UPDATE_ATTACKS` maps `attack.kind` to the function that turns the attacker's round
(`AttackRound`: its own update, and on demand its colluders' benign ones) into the update it
sends. The data-poisoning attacks (label-flip, backdoor) train on poisoned data
(`fedmirasol.data.poisoning`, plugged in where the task builds a client's data) and only scale
the update they trained. The client mod that applies them is `fedmirasol.client.mods.attack`.
"""

from fedmirasol.client.attacks.updates import (
    UPDATE_ATTACKS, AttackRound, gaussian, little_is_enough, scaled, sign_flip,
)

__all__ = ["UPDATE_ATTACKS", "AttackRound", "gaussian", "little_is_enough", "scaled",
           "sign_flip"]
