"""Scores of generated text: QA exact match per question type, captioning CIDEr and BLEU-4.

Metric keys (what `training.loop.evaluate` adds to its result): ``exact_match`` over all
questions, ``em_<type>`` and ``n_<type>`` (questions of that type) per question type,
``cider``, ``bleu4`` and ``n_caption`` over the captions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

import torch
from torch import nn

from fedmirasol.data.videoqa import CAPTION, QUESTION_TYPES
from fedmirasol.training.text_metrics import bleu4, cider, exact_match


class TextScores:
    """Generated answers and captions with their references, by question type."""

    def __init__(self) -> None:
        self.pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.loss_sum = 0.0
        self.loss_count = 0

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def add_batch(self, model: nn.Module, batch: Mapping[str, torch.Tensor],
                  latents: torch.Tensor, generation: Mapping[str, Any] | None = None) -> None:
        """Generate the answers of `batch`'s samples that ask a question (``question_type``
        >= 0) from their `latents`, and keep them with the reference answers."""
        asked = batch.get("question_type")
        if asked is None or not bool((asked >= 0).any()):
            return
        rows = (asked >= 0).nonzero().squeeze(1)
        decoder = model.text_decoder
        text, prompt_length = batch["text"][rows], batch["prompt_length"][rows]
        context = latents[rows]
        losses, has_text = decoder.loss_per_sample(text, context, prompt_length)
        self.loss_sum += float((losses * has_text).sum())
        self.loss_count += int(has_text.sum())
        predictions = decoder.generate(context, text, prompt_length, **dict(generation or {}))
        for kind, prediction, row, start in zip(asked[rows].tolist(), predictions, text,
                                                prompt_length.tolist()):
            reference = decoder.tokenizer.decode(row[start:])
            self.pairs[QUESTION_TYPES[kind]].append((prediction, reference))

    def metrics(self) -> dict[str, float]:
        """The scores (keys in the module docstring); empty when nothing was asked."""
        result: dict[str, float] = {}
        if self.loss_count:
            result["text_loss"] = self.loss_sum / self.loss_count
        matched = asked = 0
        for kind, pairs in sorted(self.pairs.items()):
            if kind == CAPTION:
                predictions, references = zip(*pairs)
                result.update(cider=cider(predictions, references),
                              bleu4=bleu4(predictions, references), n_caption=float(len(pairs)))
                continue
            hits = sum(exact_match(p, r) for p, r in pairs)
            result[f"em_{kind}"] = hits / len(pairs)
            result[f"n_{kind}"] = float(len(pairs))
            matched, asked = matched + hits, asked + len(pairs)
        if asked:
            result["exact_match"] = matched / asked
            result["n_questions"] = float(asked)
        return result



def is_text_metric(key: str) -> bool:
    """Whether `key` (as `TextScores.metrics` names it) is a generated-text score or count."""
    return key in ("exact_match", "cider", "bleu4", "n_questions") or key.startswith(("em_", "n_"))


def text_reply_metrics(result: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The text scores of an evaluation result as reply metric keys: ``exact_match`` ->
    ``<prefix>exact-match``, ``em_shape`` -> ``<prefix>em-shape``, ..."""
    return {prefix + key.replace("_", "-"): float(value) for key, value in result.items()
            if is_text_metric(key)}


def count_key(score: str) -> str | None:
    """The count a score is a mean over (`exact_match` -> `n_questions`, `em_shape` ->
    `n_shape`, `cider` -> `n_caption`); None for a key that is not a score."""
    if score == "exact_match":
        return "n_questions"
    if score in ("cider", "bleu4"):
        return "n_caption"
    if score.startswith("em_"):
        return "n_" + score[len("em_"):]
    return None
