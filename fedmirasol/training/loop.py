"""Training and evaluation loops shared by centralized and federated training."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from fedmirasol.data.batch import Batch, to_device
from fedmirasol.models.objectives import objective_of, training_loss
from fedmirasol.training.device import autocast
from fedmirasol.training.text_eval import TextScores
from fedmirasol.training.pretrain_eval import evaluate_objective

ExtraLoss = Callable[[nn.Module], torch.Tensor]
StepCallback = Callable[[int, float], None]


def train_epochs(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    device: torch.device | str = "cpu",
    extra_loss: ExtraLoss | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train for `epochs` passes over `loader`; return mean loss (and each term) and step count.

    `extra_loss(model)` is added to every step's loss (FedProx's proximal term, say).
    """
    device = torch.device(device)
    model.train()
    if (objective := objective_of(model)) is not None:
        objective.before_training(model)
    sums: dict[str, float] = defaultdict(float)
    steps = examples = 0
    for _ in range(epochs):
        for batch in loader:
            batch = to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss, parts = training_loss(model, batch)
            if extra_loss is not None:
                extra = extra_loss(model)
                loss = loss + extra
                parts["extra"] = float(extra.detach())
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps += 1
            examples += len(batch["label"])
            sums["loss"] += float(loss.detach())
            for name, value in parts.items():
                sums[f"loss_{name}"] += value
            if on_step is not None:
                on_step(steps, float(loss.detach()))
    if steps == 0:
        raise ValueError("the training loader yielded no batches")
    metrics = {name: total / steps for name, total in sums.items()}
    metrics.update(steps=float(steps), num_examples=float(examples))
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Batch], *, device: torch.device | str = "cpu",
    generation: Mapping[str, Any] | None = None,
    loss_bound: float | None = None,
) -> dict[str, float]:
    """Classification loss and accuracy over `loader`'s labelled samples and, for samples that
    ask a question or want a caption (``question_type`` >= 0), the generated text's scores
    (`fedmirasol.training.text_eval`; `generation`: the decoding options of
    `TextDecoder.generate`). On data without labels ``loss`` is the text cross-entropy and
    ``accuracy`` the QA exact match. `loss_bound` clips each sample's classification loss (the
    bounded sums DP evaluation noises). A model with a pre-training objective reports that
    objective's loss and accuracy instead (`fedmirasol.training.pretrain_eval`; under a
    `loss_bound` only its per-clip figures, possibly without an accuracy)."""
    if objective_of(model) is not None:
        return evaluate_objective(model, loader, device=device, loss_bound=loss_bound)
    device = torch.device(device)
    model.eval()
    loss_sum = 0.0
    correct = count = 0
    text = TextScores()
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            output = model(batch)
            text.add_batch(model, batch, output.latents, generation)
        logits = output.logits.float()
        labelled = batch["label"] >= 0
        if not bool(labelled.any()):
            continue
        logits, labels = logits[labelled], batch["label"][labelled]
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        if loss_bound is not None:
            losses = losses.clamp(max=loss_bound)
        loss_sum += float(losses.sum())
        correct += int((logits.argmax(dim=-1) == labels).sum())
        count += int(labelled.sum())
    scores = text.metrics()
    if count:
        return {"loss": loss_sum / count, "accuracy": correct / count, "num_examples": float(count),
                **scores}
    if "text_loss" in scores:
        examples = scores.get("n_questions", 0.0) + scores.get("n_caption", 0.0)
        return {"loss": scores["text_loss"], "accuracy": scores.get("exact_match", 0.0),
                "num_examples": examples, **scores}
    raise ValueError("the evaluation loader holds no labelled samples and no questions")
