"""Evaluation of a model that carries a pre-training objective (`fedmirasol.models.objectives`).

Every objective reports ``loss`` (its own loss on the data) and ``accuracy``:

- videomae: ``loss`` is the masked-patch reconstruction error, under masks drawn from a fixed
  seed so rounds compare; ``accuracy`` is a leave-one-out kNN probe of the trained encoders'
  pooled features on the labelled clips (``knn_accuracy``).
- contrastive: ``loss`` is InfoNCE per evaluation batch; ``accuracy`` is the zero-shot accuracy
  from the class prompts (``zero_shot_accuracy``; without prompts, video->text Recall@1), plus
  retrieval over the whole set: captions are deduplicated into the text gallery, a clip's
  relevant text is its caption and a caption's relevant clips are those it describes
  (``v2t_r1/r5/r10``, ``v2t_median_rank``, ``t2v_*``, ``gallery_texts``).

With a `loss_bound` (the bounded per-sample sums a DP evaluation noises) only figures in which
each clip's term depends on that clip alone: ``loss`` is the mean of each clip's loss clipped to
[0, loss_bound] (videomae: its error under the fixed masks; contrastive: InfoNCE against the
public negatives), ``accuracy`` the share of clips that zero-shot classification gets right
(the prompts are public) and is left out for videomae: the kNN probe and retrieval compare the
clips with each other, so one clip would move other clips' figures.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fedmirasol.data.batch import Batch, to_device
from fedmirasol.models.objectives import Contrastive, Objective, VideoMAE, objective_of
from fedmirasol.models.objectives.contrastive import zero_shot_classes, zero_shot_predict
from fedmirasol.training.device import autocast
from fedmirasol.training.retrieval import knn_accuracy, retrieval_metrics

EVAL_MASK_SEED = 0  # the masks of every evaluation: the same clips get the same masks
# Keys the objectives' evaluations add to loss, accuracy and num_examples.
OBJECTIVE_METRICS = ("knn_accuracy", "mae_video", "mae_audio", "zero_shot_accuracy",
                     "v2t_r1", "v2t_r5", "v2t_r10", "v2t_median_rank",
                     "t2v_r1", "t2v_r5", "t2v_r10", "t2v_median_rank", "gallery_texts",
                     "temperature")


@torch.no_grad()
def evaluate_objective(model: nn.Module, loader: Iterable[Batch], *,
                       device: torch.device | str = "cpu",
                       loss_bound: float | None = None) -> dict[str, float]:
    """The attached objective's evaluation (see the module docstring)."""
    objective = objective_of(model)
    if objective is None:
        raise ValueError("the model carries no pre-training objective")
    model.eval()
    device = torch.device(device)
    if loss_bound is not None:
        return _per_clip(model, objective, loader, device, loss_bound)
    evaluate = EVALUATORS[objective.name]
    return evaluate(model, objective, loader, device)


def _per_clip(model: nn.Module, objective: Objective, loader: Iterable[Batch],
              device: torch.device, bound: float) -> dict[str, float]:
    """Figures summed over clips, each clip's term bounded and its own (a DP release's)."""
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    classes = None
    if isinstance(objective, Contrastive):
        objective.before_training(model)  # the public negatives (in-batch has no per-clip loss)
        classes = _class_embeddings(objective, device)
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            if isinstance(objective, VideoMAE):
                losses = sum(errors for errors, _ in
                             objective.terms(model, batch, generator).values())
            else:
                losses = objective.per_sample_loss(model, batch)
            if classes is not None:
                predicted = zero_shot_predict(objective.embed_video(model, batch).cpu(), classes)
                correct += int((predicted == batch["label"].cpu()).sum())
        loss_sum += float(losses.float().clamp(0.0, bound).sum())
        count += len(losses)
    if not count:
        raise ValueError("the evaluation loader yielded no batches")
    metrics = {"loss": loss_sum / count, "num_examples": float(count)}
    if classes is not None:
        metrics["accuracy"] = correct / count  # unlabelled clips count as wrong
    return metrics


def _labelled(labels: list[torch.Tensor], *values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    all_labels = torch.cat(labels)
    keep = all_labels >= 0
    return (all_labels[keep], *(torch.cat(v)[keep] for v in values))


def _videomae(model: nn.Module, objective: Objective, loader: Iterable[Batch],
              device: torch.device) -> dict[str, float]:
    assert isinstance(objective, VideoMAE)
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    features, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            for name, (errors, has) in objective.terms(model, batch, generator).items():
                sums[name] = sums.get(name, 0.0) + float(errors.float().sum())
                counts[name] = counts.get(name, 0) + int(has.sum())
            features.append(objective.features(model, batch).cpu())
        labels.append(batch["label"].cpu())
    if not counts:
        raise ValueError("the evaluation loader yielded no batches")
    terms = {f"mae_{name}": sums[name] / counts[name] for name in sums if counts[name]}
    labels_kept, features_kept = _labelled(labels, features)
    knn = knn_accuracy(features_kept, labels_kept) if len(labels_kept) >= 2 else 0.0
    return {"loss": sum(terms.values()), "accuracy": knn, "knn_accuracy": knn,
            "num_examples": float(sum(len(x) for x in labels)), **terms}


def _contrastive(model: nn.Module, objective: Objective, loader: Iterable[Batch],
                 device: torch.device) -> dict[str, float]:
    assert isinstance(objective, Contrastive)
    if objective.negatives == "public":
        objective.before_training(model)  # the negatives of the loss, as training uses them
    loss_sum, loss_count = 0.0, 0
    videos, texts, captions, labels, captioned = [], [], [], [], []
    tokenizer = objective.text_encoder.tokenizer
    for batch in loader:
        batch = to_device(batch, device)
        has = objective.has_caption(batch)
        with autocast(device):
            video = objective.embed_video(model, batch)
            text = objective.embed_text(batch["text"])
            if bool(has.any()):  # (one clip alone has nothing to contrast: loss 0)
                value, _ = objective.loss(model, batch)
                loss_sum += float(value) * int(has.sum())
                loss_count += int(has.sum())
        videos.append(video.cpu())
        texts.append(text.cpu())
        labels.append(batch["label"].cpu())
        captioned.append(has.cpu())
        captions += [tokenizer.decode(row) for row in batch["text"].cpu()]
    if not videos:
        raise ValueError("the evaluation loader yielded no batches")
    video, text, has = torch.cat(videos), torch.cat(texts), torch.cat(captioned)
    if not loss_count:
        raise ValueError("contrastive evaluation needs captions: no clip has one")
    metrics: dict[str, float] = {"num_examples": float(len(video)),
                                 "temperature": float(1.0 / objective.scale(1)[0]),
                                 "loss": loss_sum / loss_count}
    metrics.update(_retrieval(video[has], text[has], [c for c, h in zip(captions, has) if h]))
    zero_shot = _zero_shot(objective, video, torch.cat(labels), device)
    if zero_shot is not None:
        metrics["zero_shot_accuracy"] = zero_shot
    metrics["accuracy"] = zero_shot if zero_shot is not None else metrics.get("v2t_r1", 0.0)
    return metrics


def _retrieval(video: torch.Tensor, text: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Retrieval with the distinct captions as the text gallery."""
    gallery = list(dict.fromkeys(captions))
    column = {caption: i for i, caption in enumerate(gallery)}
    of_clip = torch.tensor([column[c] for c in captions])
    relevant = of_clip[:, None] == torch.arange(len(gallery))[None]
    first = torch.stack([text[of_clip == j][0] for j in range(len(gallery))])
    return {**retrieval_metrics(video @ first.T, relevant), "gallery_texts": float(len(gallery))}


def _class_embeddings(objective: Contrastive, device: torch.device) -> torch.Tensor | None:
    """``classes x E``: each class's prompt ensemble (None without prompts)."""
    prompts = objective.class_prompts
    if not prompts:
        return None
    tokenizer = objective.text_encoder.tokenizer
    max_len = objective.text_encoder.max_len
    embedded = [objective.embed_text(torch.stack([tokenizer.encode(p, max_len) for p in class_prompts]
                                                 ).to(device)).cpu()
                for class_prompts in prompts]
    return zero_shot_classes(embedded)


def _zero_shot(objective: Contrastive, video: torch.Tensor, labels: torch.Tensor,
               device: torch.device) -> float | None:
    classes = _class_embeddings(objective, device)
    if classes is None or not bool((labels >= 0).any()):
        return None
    predicted = zero_shot_predict(video, classes)
    keep = labels >= 0
    return float((predicted[keep] == labels[keep]).float().mean())


EVALUATORS = {VideoMAE.name: _videomae, Contrastive.name: _contrastive}

