"""Client dropout under secure aggregation, and the check that every completed round's secure
mean is the survivors' exact mean (tests and benchmarks).

`drop_each_round` makes a share of the nodes vanish in every round, drawn at random, each round
at one stage of the protocol (before sending keys, before sharing, before masking, before
signing the survivor set, while unmasking: every stage once in each run of five rounds, in a
shuffled order). `check_secure_means` then reads a finished run
directory: a round either completed or failed with its reason in metrics.jsonl; for a
completed round, the global model's move (checkpoint of the round minus that of the round
before) is compared with the weighted mean of the participants' updates, each recomputed in the
clear from the run config (a client's training is seeded by run, round and client, so this is
the update it masked). The two must agree within one quantization step
(`secagg.range / 2^(secagg.bits - 1)`): each client's stochastic rounding is off by less than
one step times its weight, so their weighted mean is too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import RecordDict

from fedmirasol.client import task as client_task
from fedmirasol.config import RunConfig
from fedmirasol.core.parameters import NumpyState, model_state
from fedmirasol.runs import run_dir as rundir
from fedmirasol.secagg import protocol
from fedmirasol.task.model import init_model, parameter_split
from fedmirasol.testing.local_grid import LocalGrid

STAGES = (protocol.KEYS, protocol.SHARES, protocol.MASK, protocol.CONSISTENCY, protocol.UNMASK)
AFTER_MASKING = (protocol.CONSISTENCY, protocol.UNMASK)  # a node vanishing here is in the sum


@dataclass(frozen=True)
class Dropout:
    """Who vanished in a round, and from which stage on."""

    stage: str
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class RoundCheck:
    """One round of a run with dropouts."""

    server_round: int
    dropout: Dropout
    participants: tuple[int, ...]  # partition ids inside the secure sum
    failure: str | None  # why the previous model was kept, if it was
    max_error: float | None  # largest |secure mean - exact mean| over the values (completed)
    step: float  # one quantization step: the bound on max_error
    model_kept: bool  # a failed round left the global model as it was

    @property
    def ok(self) -> bool:
        if self.failure is not None:
            return bool(self.failure) and self.model_kept
        return self.max_error is not None and self.max_error <= self.step


def drop_each_round(grid: LocalGrid, rounds: int, fraction: float, seed: int
                    ) -> dict[int, Dropout]:
    """In every round, round(`fraction` x nodes) nodes of `grid` vanish from one stage on
    (drawn with `seed`); the plan by round."""
    rng = np.random.default_rng(seed)
    nodes = sorted(grid.get_node_ids())
    count = round(fraction * len(nodes))
    plan, order = {}, []
    for server_round in range(1, rounds + 1):
        gone = tuple(sorted(int(n) for n in rng.choice(nodes, count, replace=False)))
        order = order or list(rng.permutation(STAGES))
        stage = str(order.pop())
        grid.drop(gone, stage, group_id=str(server_round))
        plan[server_round] = Dropout(stage, gone)
    return plan


def initial_shared(config: RunConfig) -> NumpyState:
    """The shared parameters of the initial model (what round 1 starts from)."""
    model = init_model(config)
    return model_state(model, parameter_split(model, config).shared)


def exact_mean(config: RunConfig, server_round: int, global_shared: NumpyState,
               participants: tuple[int, ...]) -> NumpyState:
    """The weighted mean (the secure aggregation's weights) of the participants' updates,
    each recomputed from the run config in the clear."""
    results = [client_task.train(config, pid, server_round, global_shared, RecordDict())
               for pid in participants]
    equal = config.secagg_weighting() == "equal"
    weights = np.array([1.0 if equal else r.num_examples for r in results], dtype=np.float64)
    return {name: sum(w * r.update[name].astype(np.float64) for w, r in zip(weights, results))
            / weights.sum() for name in global_shared}


def check_secure_means(run_dir: Path, plan: dict[int, Dropout]) -> list[RoundCheck]:
    """Every round of the finished run in `run_dir` against `plan`. The exact means are
    recomputed in the clear from the run config alone, so a run whose updates also depend on
    what the clients keep (local parameters) or on the release's clipping is refused."""
    config = rundir.read_config(run_dir)
    if config.local_selectors() or config.defense.norm_bound:
        raise ValueError("check_secure_means recomputes each update from the run config "
                         "alone: run it without local or personal parameters (split.local, "
                         "FedBN, FedPer/FedRep) and without defense.norm-bound")
    step = config.secagg_bound() / 2 ** (config.secagg.bits - 1)
    before = initial_shared(config)
    checks = []
    for record in (r for r in rundir.read_metrics(run_dir) if r["round"] > 0):
        server_round = record["round"]
        after = rundir.read_checkpoint(run_dir / rundir.CHECKPOINT_DIR
                                       / f"round-{server_round:04d}.json").global_shared
        failure = record["aggregate_kept_previous"]
        participants = tuple(record["participants"])
        kept = all(np.array_equal(after[name], before[name]) for name in before)
        error = None
        if failure is None:
            mean = exact_mean(config, server_round, before, participants)
            error = max(float(np.max(np.abs(after[name].astype(np.float64) - before[name]
                                            - mean[name]))) for name in before)
        checks.append(RoundCheck(server_round, plan[server_round], participants, failure,
                                 error, step, kept))
        before = after
    return checks
