"""Where an attacker's values land against the honest updates' spread, per value.

Round 1 of the default config (from the initial model, 2 of 10 clients attacking as in
`byzantine_table.py`): every client's honest update is computed; for sign-flip and
little-is-enough (z = 1.42) the script prints the share of the trainable values where the
attackers' value lies inside the 8 honest values' range. With both attackers sending the same
value, that is also the share a trimmed mean with beta = 0.2 keeps. An honest update's own
share is printed beside them (non-IID updates are not inside each other's range either).

    python benchmarks/byzantine_spread.py
"""

from __future__ import annotations

import json

import numpy as np


def main() -> None:
    from flwr.app import RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.client import task as client_task
    from fedmirasol.client.attacks import AttackRound, little_is_enough, sign_flip
    from fedmirasol.config import load_config
    from fedmirasol.task.model import init_model, trainable_shared
    from fedmirasol.testing.dropout import initial_shared

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = load_config(None, ["client.threads=1", 'attack.kind="little-is-enough"',
                                "attack.fraction=0.2", "attack.z=1.42"])
    global_shared = initial_shared(config)
    names = trainable_shared(init_model(config), global_shared)
    attackers = sorted(config.attack.attackers(config.data.num_clients, config.seed))
    updates = {pid: client_task.train(config, pid, 1, global_shared, RecordDict()).update
               for pid in range(config.data.num_clients)}

    def flat(update) -> np.ndarray:
        return np.concatenate([update[name].ravel() for name in names])

    honest = np.stack([flat(u) for pid, u in updates.items() if pid not in attackers])
    low, high = honest.min(axis=0), honest.max(axis=0)
    own = updates[attackers[0]]
    sent = {"sign-flip": sign_flip, "little-is-enough z=1.42": little_is_enough}
    inside = {label: float(np.mean((v >= low) & (v <= high))) for label, v in (
        *((label, flat(attack(AttackRound(config, attackers[0], 1, own,
                                          lambda: [updates[p] for p in attackers]))))
          for label, attack in sent.items()),
        ("an attacker's own honest update", flat(own)))}
    print(json.dumps({"attackers": attackers, "share inside the honest range": inside,
                      "update norms": {pid: round(float(np.linalg.norm(flat(u))), 3)
                                       for pid, u in updates.items()}}, indent=1))


if __name__ == "__main__":
    main()
