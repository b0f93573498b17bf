"""The training objective as one loss per sample, as DP-SGD needs it.

`mirasol_loss` averages each term over the samples that support it (the labelled ones, the
captioned ones), so one sample's gradient there depends on how many others are labelled.
DP-SGD bounds each sample's own contribution, so here every sample's loss depends on that
sample alone: the weighted sum of the terms it supports (zero for a term it cannot support).
A model with a pre-training objective (`fedmirasol.models.objectives`) gives that objective's
per-sample loss instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmirasol.models.mirasol import Mirasol, MirasolOutput
from fedmirasol.models.objectives import objective_of


def per_sample_loss(model: Mirasol, batch: dict[str, torch.Tensor],
                    output: MirasolOutput) -> torch.Tensor:
    """``B`` losses: class + text + latent terms, each weighted as in the model config."""
    config = model.config
    labels = batch["label"]
    labelled = (labels >= 0).to(output.logits.dtype)
    class_loss = F.cross_entropy(output.logits.float(), labels.clamp(min=0), reduction="none")
    total = config.class_weight * class_loss * labelled
    if config.text_weight > 0:
        text_loss, has_text = model.text_decoder.batch_loss(batch, output.latents)
        total = total + config.text_weight * text_loss.float() * has_text.to(total.dtype)
    if config.latent_weight > 0 and output.latent_loss is not None:
        total = total + config.latent_weight * output.latent_loss.float()
    return total


def sample_losses(model: Mirasol, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``B`` per-sample losses of the model's objective: its attached pre-training objective's,
    or Mirasol's weighted terms."""
    objective = objective_of(model)
    if objective is not None:
        return objective.per_sample_loss(model, batch)
    return per_sample_loss(model, batch, model(batch))
