"""Video-text contrastive training (CLIP, Radford et al. 2021; VideoCLIP, Xu et al. 2021).

    clip    -> the model's latents (Mirasol: the AR outputs; late fusion: its two pooled
               features), mean-pooled -> LayerNorm + Linear -> v, unit length
    caption -> TextEncoder -> LayerNorm + Linear -> t, unit length
    loss    =  symmetric InfoNCE over s * v @ t^T, s = exp(learned log-scale) <= 100

Negatives (`negatives`):

- ``in-batch`` (CLIP): each clip's caption against the other captions of its batch and the
  other way round. In a federation a batch is one client's, so the negatives are that client's
  own clips: a client with few classes mostly contrasts clips of the same class, and a smaller
  `client.batch-size` means fewer negatives. Every sample's loss depends on the whole batch, so
  DP-SGD's per-sample clipping does not bound one sample's influence: under sample-level DP
  this mode is refused (client-level DP, which clips the client's whole update, takes it).
- ``public``: each sample's loss is InfoNCE against a fixed set of public negatives only: the
  embeddings of `public_negatives` public clips and their captions (set by the caller, e.g. the
  public variant of the synthetic task), computed with the current weights before each local
  training pass and held fixed (no gradient) during it, MoCo-style. A sample's loss then reads
  that sample and public data only, so per-sample clipping bounds its influence and DP-SGD's
  accounting holds as it is.

Zero-shot classification: each class's prompts are embedded, averaged (a prompt ensemble) and a
clip takes the class whose embedding is nearest (largest cosine).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedmirasol.models.attention import LearnedTokens
from fedmirasol.models.objectives.base import Batch, Objective
from fedmirasol.models.text_encoder import TextEncoder

NEGATIVES = ("in-batch", "public")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clip of the learned temperature


def info_nce(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float
             ) -> torch.Tensor:
    """Symmetric InfoNCE of ``B x E`` unit-length embeddings, pair i matching: the mean of the
    cross-entropies of ``scale * video @ text.T`` along its rows and its columns."""
    logits = scale * video @ text.T
    targets = torch.arange(len(video), device=video.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def info_nce_fixed_negatives(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                             negative_video: torch.Tensor, negative_text: torch.Tensor
                             ) -> torch.Tensor:
    """``B`` per-sample symmetric InfoNCE: clip i against [its caption; the K negative
    captions], caption i against [its clip; the K negative clips]. `scale`: ``B`` or scalar."""
    scale = torch.as_tensor(scale, device=video.device).reshape(-1, 1)
    positive = (video * text).sum(dim=-1, keepdim=True)  # B x 1
    video_to_text = scale * torch.cat([positive, video @ negative_text.T], dim=1)
    text_to_video = scale * torch.cat([positive, text @ negative_video.T], dim=1)
    zeros = torch.zeros(len(video), dtype=torch.long, device=video.device)
    return (F.cross_entropy(video_to_text, zeros, reduction="none")
            + F.cross_entropy(text_to_video, zeros, reduction="none")) / 2


def zero_shot_classes(prompt_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Per class a ``prompts x E`` tensor of unit embeddings -> ``classes x E``: each class's
    mean prompt embedding, unit length (a prompt ensemble)."""
    return F.normalize(torch.stack([p.mean(dim=0) for p in prompt_embeddings]), dim=-1)


def zero_shot_predict(video: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``B`` the class whose embedding is nearest (largest cosine) to each clip's."""
    return (video @ classes.T).argmax(dim=-1)


class Contrastive(Objective):
    name = "contrastive"

    # Parts of the model the pooled latents never reach: the classification heads, the text
    # decoder and the latent predictor stay frozen.
    UNUSED = ("classifier.", "head.", "text_decoder.", "autoregressive.predictor.")

    def __init__(self, model: nn.Module, embed_dim: int = 0, temperature: float = 0.07,
                 learn_temperature: bool = True, negatives: str = "in-batch",
                 text_depth: int = 0) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        config = model.config
        dim = embed_dim or config.width
        self.negatives = negatives
        self.text_encoder = TextEncoder(config.width, text_depth or config.text_depth,
                                        config.heads, config.mlp_ratio, config.max_text_len)
        self.video_projection = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, dim))
        self.text_projection = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, dim))
        self.log_scale = LearnedTokens(1, 1)  # an Embedding: Opacus has its grad sampler
        nn.init.constant_(self.log_scale.embedding.weight, math.log(1.0 / temperature))
        self.log_scale.requires_grad_(learn_temperature)
        self.learn_temperature = learn_temperature
        self.register_buffer("negative_video", torch.zeros(0, dim), persistent=False)
        self.register_buffer("negative_text", torch.zeros(0, dim), persistent=False)
        self.public_batch: Batch | None = None  # clips and captions for `negatives = "public"`
        self.class_prompts: list[list[str]] | None = None  # zero-shot prompts per class

    def trains(self, name: str) -> bool:
        if name == "objective.log_scale.embedding.weight":
            return self.learn_temperature
        return not name.startswith(self.UNUSED)

    def scale(self, batch_size: int) -> torch.Tensor:
        """``B`` logit scales (all equal): exp of the learned log-scale, at most 100."""
        log_scale = self.log_scale(batch_size).reshape(batch_size)
        return log_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()

    def embed_video(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``B x E`` unit embeddings of the clips (video and audio, through the whole model)."""
        pooled = model(batch).latents.mean(dim=1)
        return F.normalize(self.video_projection(pooled).float(), dim=-1)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B x E`` unit embeddings of caption token rows."""
        return F.normalize(self.text_projection(self.text_encoder(tokens)).float(), dim=-1)

    def has_caption(self, batch: Batch) -> torch.Tensor:
        return (batch["text"] != self.text_encoder.tokenizer.pad_id).any(dim=1)

    def set_public_negatives(self, batch: Batch) -> None:
        """Public clips with captions whose embeddings are the fixed negatives (`public`)."""
        if not bool(self.has_caption(batch).all()):
            raise ValueError("every public negative needs a caption")
        self.public_batch = dict(batch)

    @torch.no_grad()
    def before_training(self, model: nn.Module) -> None:
        """Embed the public negatives with the current weights (held fixed during the pass)."""
        if self.negatives != "public":
            return
        if self.public_batch is None:
            raise ValueError("negatives = 'public' needs public clips: set_public_negatives()")
        device = self.log_scale.embedding.weight.device
        batch = {key: value.to(device) for key, value in self.public_batch.items()}
        was_training = model.training
        model.eval()
        try:
            self.negative_video = self.embed_video(model, batch)
            self.negative_text = self.embed_text(batch["text"])
        finally:
            model.train(was_training)

    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if self.negatives != "public":
            raise ValueError("in-batch InfoNCE couples the samples of a batch and has no "
                             "per-sample loss: use negatives = 'public' (pretrain.negatives) "
                             "for DP-SGD")
        if len(self.negative_text) == 0:
            raise ValueError("the public negatives are not embedded yet: call before_training()")
        video, text = self.embed_video(model, batch), self.embed_text(batch["text"])
        losses = info_nce_fixed_negatives(video, text, self.scale(len(video)),
                                          self.negative_video, self.negative_text)
        return losses * self.has_caption(batch)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        captioned = self.has_caption(batch)
        if not bool(captioned.any()):
            raise ValueError("contrastive training needs captions: no clip of the batch has one")
        if self.negatives == "public":
            value = self.per_sample_loss(model, batch).sum() / captioned.sum()
        else:
            video = self.embed_video(model, batch)[captioned]
            text = self.embed_text(batch["text"][captioned])
            value = info_nce(video, text, self.scale(1)[0])
        return value, {"contrastive": float(value.detach())}
