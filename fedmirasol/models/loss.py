"""Mirasol's training objective: weighted classification, text and latent terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmirasol.models.mirasol import Mirasol, MirasolOutput


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Mean of `values` where `mask` holds, or None when it holds nowhere."""
    if not bool(mask.any()):
        return None
    return (values * mask).sum() / mask.sum()


def mirasol_loss(
    model: Mirasol, batch: dict[str, torch.Tensor], output: MirasolOutput | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the terms this batch supports, and each term's value.

    Classification needs labels (label >= 0), text needs captions or answers (non-PAD tokens
    after the prompt), the latent
    term needs at least two chunks; a term the batch cannot support is skipped, not zeroed in.
    """
    config = model.config
    output = output if output is not None else model(batch)
    terms: dict[str, tuple[float, torch.Tensor]] = {}

    labels = batch["label"]
    labelled = labels >= 0
    class_loss = F.cross_entropy(output.logits.float(), labels.clamp(min=0), reduction="none")
    if (term := masked_mean(class_loss, labelled)) is not None:
        terms["class"] = (config.class_weight, term)

    if config.text_weight > 0:
        text_loss, has_text = model.text_decoder.batch_loss(batch, output.latents)
        if (term := masked_mean(text_loss, has_text)) is not None:
            terms["text"] = (config.text_weight, term)

    if config.latent_weight > 0 and output.latent_loss is not None:
        terms["latent"] = (config.latent_weight, output.latent_loss.float().mean())

    if not terms:
        raise ValueError("the batch has no labels, no captions and a single chunk: nothing to learn")
    total = sum(weight * value for weight, value in terms.values())
    return total, {name: float(value.detach()) for name, (_, value) in terms.items()}
