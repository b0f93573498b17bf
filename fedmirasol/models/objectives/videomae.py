"""VideoMAE (Tong et al., NeurIPS 2022): masked autoencoding of video with very high tube masking.

Per sample: hide `mask_ratio` (0.9) of the patch grid on every frame (`tube_mask`), encode the
visible tokens only (`masked_encoding`), decode them with mask tokens at the hidden positions
(`MAEDecoder`) and take the mean squared error between the predicted and the normalized
pixels of the hidden patches (`norm_pixels`; off: the pixels as the encoder reads them), and
of those only. With `audio_mask_ratio` > 0 Mirasol's audio
encoder is trained the same way on its log-mel patches (AudioMAE-style random masking, Huang
et al. 2022); the two errors are added.

Trained: the video encoder (and the audio encoder with audio masking) and the decoders; the
rest of the model is frozen. Every sample's loss reads only that sample (its own mask), so
DP-SGD's per-sample clipping applies as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.audio_encoder import AudioEncoder
from fedmirasol.models.loss import masked_mean
from fedmirasol.models.mae_decoder import MAEDecoder
from fedmirasol.models.masked_encoding import (
    MaskedEncoding,
    MirasolAudioMasking,
    MirasolVideoMasking,
    TimeSformerMasking,
)
from fedmirasol.models.objectives.base import Batch, Objective
from fedmirasol.models.timesformer import TimeSformer


def reconstruction_error(predicted: torch.Tensor, encoding: MaskedEncoding) -> torch.Tensor:
    """``B`` mean squared error over the hidden patches' values (the targets hold those only)."""
    return (predicted.float() - encoding.targets).pow(2).mean(dim=(1, 2, 3))


class VideoMAE(Objective):
    name = "videomae"

    def __init__(self, model: nn.Module, mask_ratio: float = 0.9, audio_mask_ratio: float = 0.0,
                 decoder_width: int = 0, decoder_depth: int = 1, norm_pixels: bool = True) -> None:
        super().__init__()
        config = model.config
        self.mask_ratio = mask_ratio
        self.norm_pixels = norm_pixels
        self.audio_mask_ratio = audio_mask_ratio
        width = decoder_width or max(config.heads, config.width // 2)
        video = model.video_encoder
        self.video_masking = (TimeSformerMasking(video) if isinstance(video, TimeSformer)
                              else MirasolVideoMasking(video))
        self.video_decoder = MAEDecoder(config.width, width, decoder_depth, config.heads,
                                        config.mlp_ratio, self.video_masking.values_per_patch)
        self.audio_masking = self.audio_decoder = None
        if audio_mask_ratio > 0:
            if not isinstance(model.audio_encoder, AudioEncoder):
                raise ValueError("audio masking (AudioMAE-style) needs the non-overlapping "
                                 "log-mel patches of Mirasol's audio encoder; the late-fusion "
                                 "model's AST patches overlap, so a visible patch would show "
                                 "part of a hidden one")
            self.audio_masking = MirasolAudioMasking(model.audio_encoder)
            self.audio_decoder = MAEDecoder(config.width, width, decoder_depth, config.heads,
                                            config.mlp_ratio, self.audio_masking.values_per_patch)
        self.trained_prefixes = ("video_encoder.", "objective.") + (
            ("audio_encoder.",) if self.audio_masking is not None else ())
        self.frames_per_chunk = config.frames_per_chunk

    def trains(self, name: str) -> bool:
        return name.startswith(self.trained_prefixes)

    def terms(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per term (``video``, ``audio``): (``B`` reconstruction errors, ``B`` bool: samples
        that have the modality; the others' errors are zero)."""
        video = batch["video"]
        encoding = self.video_masking(model.video_encoder, video, self.mask_ratio, generator,
                                      self.norm_pixels)
        predicted = self.video_decoder(encoding.encoded, encoding.visible_centres,
                                       encoding.hidden_centres, encoding.valid)
        has_video = batch["video_present"].bool()
        terms = {"video": (reconstruction_error(predicted, encoding) * has_video, has_video)}
        if self.audio_masking is not None:
            chunks = video.shape[1] // self.frames_per_chunk
            encoding = self.audio_masking(model.audio_encoder, batch["audio"], chunks,
                                          self.audio_mask_ratio, generator)
            predicted = self.audio_decoder(encoding.encoded, encoding.visible_centres,
                                           encoding.hidden_centres)
            has_audio = batch["audio_present"].bool()
            terms["audio"] = (reconstruction_error(predicted, encoding) * has_audio, has_audio)
        return terms

    def per_sample_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return sum(errors for errors, _ in self.terms(model, batch).values())

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Each term averaged over the samples that have its modality, summed."""
        means = {name: masked_mean(errors, has) for name, (errors, has)
                 in self.terms(model, batch, generator).items()}
        means = {name: value for name, value in means.items() if value is not None}
        if not means:
            raise ValueError("the batch has neither video nor (with audio masking) audio to "
                             "reconstruct")
        total = sum(means.values())
        return total, {f"mae_{name}": float(value.detach()) for name, value in means.items()}

    @torch.no_grad()
    def features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``B x d`` pooled features of the encoders this objective trains (the kNN probe's)."""
        video = model.video_encoder(batch["video"])
        parts = [video if video.ndim == 2 else video.mean(dim=(1, 2))]
        if self.audio_masking is not None:
            chunks = batch["video"].shape[1] // self.frames_per_chunk
            parts.append(model.audio_encoder(batch["audio"], chunks).mean(dim=(1, 2)))
        return torch.cat(parts, dim=-1).float()
