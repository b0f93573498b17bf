"""The run config's ``[pretrain]`` section: a self-supervised or contrastive objective instead of
classification (`fedmirasol.models.objectives`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

# "none" trains the classifier; the others are the names of fedmirasol.models.objectives.
OBJECTIVES = ("none", "videomae", "contrastive")
NEGATIVES = ("in-batch", "public")


class PretrainConfig(Section):
    """videomae: masked autoencoding with tube masking (trains the video encoder, and the
    audio encoder with audio-mask-ratio > 0); contrastive: video-text InfoNCE with a caption
    encoder, zero-shot classification and retrieval. The run's final model is a pre-trained
    start for fine-tuning (`pretrained.checkpoint`), which drops the objective's own parts."""

    objective: Literal[OBJECTIVES] = "none"  # type: ignore[valid-type]
    # videomae
    mask_ratio: float = Field(0.9, gt=0.0, lt=1.0)  # share of the patch grid hidden (tubes)
    audio_mask_ratio: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: AudioMAE-style, Mirasol only
    decoder_width: int = Field(0, ge=0)  # 0: half the model width
    decoder_depth: int = Field(1, ge=1)
    norm_pixels: bool = True  # targets normalized per patch (VideoMAE); false: raw pixels
    # contrastive
    embed_dim: int = Field(0, ge=0)  # 0: the model width
    temperature: float = Field(0.07, gt=0.0)  # the initial temperature
    learn_temperature: bool = True
    text_depth: int = Field(0, ge=0)  # caption encoder depth; 0: the model's text-depth
    # in-batch (CLIP) | public: each sample against fixed public negatives (DP-SGD compatible)
    negatives: Literal[NEGATIVES] = "in-batch"  # type: ignore[valid-type]
    public_negatives: int = Field(64, ge=1)  # public clips (and captions) used as negatives

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if self.objective != "videomae" and self.audio_mask_ratio > 0:
            raise ConfigError("config key 'pretrain.audio-mask-ratio' needs "
                              "pretrain.objective = 'videomae'")
        return self

    @property
    def enabled(self) -> bool:
        return self.objective != "none"

    def options(self) -> dict[str, Any]:
        """The keyword arguments of the objective's constructor."""
        if self.objective == "videomae":
            return {"mask_ratio": self.mask_ratio, "audio_mask_ratio": self.audio_mask_ratio,
                    "decoder_width": self.decoder_width, "decoder_depth": self.decoder_depth,
                    "norm_pixels": self.norm_pixels}
        if self.objective == "contrastive":
            return {"embed_dim": self.embed_dim, "temperature": self.temperature,
                    "learn_temperature": self.learn_temperature, "negatives": self.negatives,
                    "text_depth": self.text_depth}
        return {}
