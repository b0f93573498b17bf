"""How much the training treated each canary clip as data: a score per canary, higher when
it looks included.

- `UpdateScores` (``audit.observe = "updates"``): what the server sees under sample-level DP,
  each client's update each round. Within the score parameters, the update is written as
  a least-squares combination of the descent directions (normalized negative gradients at
  the round's global model) of all the canaries that client might hold, included or not; a
  canary's score adds up its coefficient over the rounds its client replied.
  A DP update hides whether any one clip was in the batch, so this is a fair test of it.
- `final_model_scores` (``audit.observe = "final-model"``): what anyone who gets the model
  sees: the log-probability of the canary's label under the final model, less that under the
  initial one (which removes how easy the clip is to begin with).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedmirasol.core.parameters import NumpyState, canonical_name, load_state
from fedmirasol.data.batch import Sample, collate
from fedmirasol.privacy.objective import sample_losses


class UpdateScores:
    """Scores of `samples` (held by the clients `owners`) from the per-client updates."""

    def __init__(self, model: nn.Module, samples: Sequence[Sample], owners: Sequence[int],
                 score_names: Iterable[str]) -> None:
        self.model = model
        self.samples = list(samples)
        self.owners = np.asarray(owners)
        names = set(score_names)
        self.params = {canonical_name(n): p for n, p in model.named_parameters()
                       if canonical_name(n) in names}
        if not self.params:
            raise ValueError("no trainable parameter to score canaries on")
        self.scores = np.zeros(len(self.samples))
        self.rounds = np.zeros(len(self.samples), dtype=np.int64)  # updates each one saw

    def descent_direction(self, index: int) -> dict[str, torch.Tensor]:
        """The canary's negative training-loss gradient over the score parameters, unit L2
        norm (zero when the gradient is)."""
        batch = collate([self.samples[index]])
        self.model.eval()
        loss = sample_losses(self.model, batch).sum()  # the objective training runs
        grads = torch.autograd.grad(loss, list(self.params.values()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g
                 for g, p in zip(grads, self.params.values())]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = 0.0 if norm == 0 else -1.0 / float(norm)
        return {name: (g.double() * scale) for name, g in zip(self.params, grads)}

    def observe(self, server_round: int, global_shared: Mapping[str, np.ndarray],
                updates: Mapping[int, NumpyState]) -> None:
        """Round `server_round`: the global model the clients started from, and
        {partition: update} of the clients whose updates the server accepted."""
        load_state(self.model, {n: v for n, v in global_shared.items()})
        for partition, update in updates.items():
            missing = [name for name in self.params if name not in update]
            if missing:
                raise ValueError(f"partition {partition}'s update lacks {missing[:3]}")
            mine = np.flatnonzero(self.owners == partition)
            if mine.size == 0:
                continue
            directions = np.stack([self._flat(self.descent_direction(int(i))) for i in mine])
            moved = self._flat({name: torch.from_numpy(np.asarray(update[name], np.float64))
                                for name in self.params})
            # the update as a combination of the client's canary directions (least squares):
            # each coefficient is its canary's share, free of the other canaries' overlap
            share, *_ = np.linalg.lstsq(directions.T, moved, rcond=None)
            self.scores[mine] += share
            self.rounds[mine] += 1

    def _flat(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        return np.concatenate([tensors[name].double().numpy().ravel() for name in self.params])

    def canary_updates(self, server_round: int, sample_rate: float) -> list[NumpyState]:
        """Canary clips join no aggregate of their own (they are in the clients' data)."""
        return []


@torch.no_grad()
def label_log_probs(model: nn.Module, samples: Sequence[Sample], batch_size: int = 32
                    ) -> np.ndarray:
    """log p(label | clip) of each sample under `model`."""
    model.eval()
    values = []
    for start in range(0, len(samples), batch_size):
        batch = collate(samples[start:start + batch_size])
        logits = model(batch).logits.float()
        values.append(torch.log_softmax(logits, dim=-1)
                      .gather(1, batch["label"].view(-1, 1)).squeeze(1))
    return torch.cat(values).double().numpy()


def final_model_scores(initial: nn.Module, final: nn.Module, samples: Sequence[Sample]
                       ) -> np.ndarray:
    """log p_final(label) - log p_initial(label) of each canary."""
    return label_log_probs(final, samples) - label_log_probs(initial, samples)
