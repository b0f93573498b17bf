"""FLTrust (Cao et al., NDSS 2021): the server's own clean root data as the trust anchor.

Every round the server trains the global model on its root data the way a client trains
(`client.*`: optimizer, lr, local epochs, batch size) and takes that update as the reference.
Each client's update scores ReLU(cosine with the reference): an update that points away from
it (a sign-flipped one) scores 0 and is left out. Every update is rescaled to the reference's
norm, so no client moves the model further than the server's own step, and the new model is
the global one plus the score-weighted mean of the rescaled updates. A round where no update
scores above 0 keeps the previous model.

The server must read every update (no secure aggregation, no encryption) and hold root data
of the task (here: `defense.root-clips` synthetic clips disjoint from the clients' pool and the
test set, `fedmirasol.task.data.root_dataset`).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Message

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import (
    NumpyState,
    apply_delta,
    delta,
    from_record,
    load_state,
    model_state,
)
from fedmirasol.core.seeds import seed_for
from fedmirasol.server.aggregators.base import Run, TrainOutcome
from fedmirasol.server.aggregators.mean import StrategyMean
from fedmirasol.task import data as task_data
from fedmirasol.task.model import init_model
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import train_epochs
from fedmirasol.training.optimizers import local_optimizer

log = logging.getLogger("fedmirasol.server")

ROOT_STREAM = 0xF17  # the reference training's seed stream, apart from every client's


def _flat(update: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(update[name], np.float64).ravel() for name in names])


def trust_scores(reference: Mapping[str, np.ndarray], updates: Sequence[Mapping[str, np.ndarray]]
                 ) -> list[float]:
    """ReLU(cosine similarity) of each update with the reference (0 for a zero update)."""
    names = sorted(reference)
    anchor = _flat(reference, names)
    anchor_norm = float(np.linalg.norm(anchor))
    scores = []
    for update in updates:
        flat = _flat(update, names)
        norm = float(np.linalg.norm(flat))
        cosine = float(flat @ anchor) / (norm * anchor_norm) if norm and anchor_norm else 0.0
        scores.append(max(cosine, 0.0))
    return scores


def trusted_mean(reference: Mapping[str, np.ndarray],
                 updates: Sequence[Mapping[str, np.ndarray]]
                 ) -> tuple[NumpyState | None, list[float]]:
    """FLTrust's aggregate update: the trust-score-weighted mean of the updates, each rescaled
    to the reference's L2 norm; None when no update scores above 0. With the scores."""
    scores = trust_scores(reference, updates)
    total = sum(scores)
    if total <= 0:
        return None, scores
    names = sorted(reference)
    reference_norm = float(np.linalg.norm(_flat(reference, names)))
    combined = {name: np.zeros(np.shape(reference[name]), np.float64) for name in names}
    for score, update in zip(scores, updates):
        if score <= 0:
            continue
        weight = score / total * reference_norm / float(np.linalg.norm(_flat(update, names)))
        for name in names:
            combined[name] += weight * np.asarray(update[name], np.float64)
    return {name: value.astype(np.float32) for name, value in combined.items()}, scores


class ReferenceTrainer:
    """Trains the server's reference update on its root data (the model is built once)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.model = init_model(config)
        self.initial = model_state(self.model, list(self.model.state_dict()))
        self.device = resolve_device(config.client.device)

    def update(self, global_shared: Mapping[str, np.ndarray], server_round: int) -> NumpyState:
        """The shared parameters' delta after local training from `global_shared` on the root
        data, seeded by (run seed, round)."""
        client, model = self.config.client, self.model
        load_state(model, self.initial)
        load_state(model, global_shared)
        seed = seed_for(self.config.seed, server_round, ROOT_STREAM)
        loader = task_data.loader(task_data.root_dataset(self.config), client.batch_size,
                                  shuffle=True, seed=seed)
        with torch.random.fork_rng(devices=[]):  # the server's own torch stream stays as it was
            torch.manual_seed(seed)
            model.to(self.device)
            train_epochs(model, loader, local_optimizer(model, client),
                         epochs=client.local_epochs, device=self.device)
            model.to("cpu")
        return delta(model_state(model, list(global_shared)), global_shared)


class FLTrustMean(StrategyMean):
    """`strategy.name = "fltrust"`: every update in the clear, through the reply filters,
    trust-scored against the server's reference update (module docstring). The round's
    record carries each client's score (`fltrust_scores`, by partition id) and the
    reference's norm."""

    name = "fltrust"

    def __init__(self, config: RunConfig) -> None:
        self.reference = ReferenceTrainer(config)
        self.notes: dict[str, object] = {}

    def train(self, run: Run, server_round: int, messages: list[Message],
              population: int) -> TrainOutcome:
        self.notes = {}
        outcome = super().train(run, server_round, messages, population)
        outcome.figures.update(self.notes)
        return outcome

    def step(self, run: Run, server_round: int, accepted: list[Message],
             num_sampled: int, population: int) -> tuple[NumpyState, str | None]:
        if not accepted:
            return run.global_shared, "no accepted updates"
        reference = self.reference.update(run.global_shared, server_round)
        updates = [from_record(reply.content.array_records["arrays"]) for reply in accepted]
        combined, scores = trusted_mean(reference, updates)
        by_partition = {str(run.partitions.get(reply.metadata.src_node_id)): score
                        for reply, score in zip(accepted, scores)}
        norm = float(np.linalg.norm(_flat(reference, sorted(reference))))
        self.notes = {"fltrust_scores": by_partition, "fltrust_reference_norm": norm}
        log.info("round %d: FLTrust scores %s (reference norm %.4g)", server_round,
                 by_partition, norm)
        if combined is None:
            return run.global_shared, "FLTrust: no update scored above 0 against the reference"
        new = apply_delta(run.global_shared, combined)
        bad = [name for name, value in new.items() if not np.isfinite(value).all()]
        if bad:
            return run.global_shared, f"aggregate holds NaN/Inf in {bad[0]!r}"
        return new, None
