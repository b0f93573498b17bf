r"""Mirasol3B (Piergiovanni et al., CVPR 2024), and its `joint` variant for comparison.

    video -> VideoEncoder -> v_t  \
                                   Combiner -> x_t -> TimeAlignedAR -> h -> ClassHead
    audio -> AudioEncoder -> a_t  /                                    \-> TextDecoder

The `joint` variant feeds the same encoders' tokens of all chunks into one transformer
(no combiner, no autoregression): what a plain video-language transformer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import LearnedTokens, Transformer
from fedmirasol.models.audio_encoder import AudioEncoder
from fedmirasol.models.autoregressive import TimeAlignedAutoregressive
from fedmirasol.models.combiner import build_combiner
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.position import sincos_1d
from fedmirasol.models.text_decoder import TextDecoder
from fedmirasol.models.video_encoder import VideoEncoder


@dataclass
class MirasolOutput:
    logits: torch.Tensor  # B x classes
    latents: torch.Tensor  # B x tokens x d: what the text decoder and the head read
    latent_loss: torch.Tensor | None  # B, or None when there is nothing to predict


def check_batch_sizes(video: torch.Tensor, audio: torch.Tensor) -> None:
    """Refuse an empty batch or video and audio batches of different sizes."""
    if video.shape[0] != audio.shape[0]:
        raise ValueError(f"video batch {video.shape[0]} != audio batch {audio.shape[0]}")
    if video.shape[0] == 0:
        raise ValueError("empty batch")


class ModalityGate(nn.Module):
    """Replace the tokens of samples that lack a modality with a learned 'absent' token.

    The model never reads the placeholder tensor of a missing modality as data.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.absent = LearnedTokens(1, width)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``B x T x n x d`` tokens, ``B`` bool -> tokens with absent samples replaced."""
        absent = self.absent(tokens.shape[0])[:, None].to(tokens.dtype)  # B x 1 x 1 x d
        return torch.where(present.view(-1, 1, 1, 1), tokens, absent.expand_as(tokens))


class ClassificationHead(nn.Sequential):
    """Mean-pooled latents -> class logits."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__(nn.LayerNorm(width), nn.Linear(width, num_classes))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return super().forward(latents.mean(dim=1))


class Mirasol(nn.Module):
    """The Mirasol model; `config.fusion` picks chunked (the paper) or joint fusion."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.config = config
        self.video_encoder = VideoEncoder(config)
        self.audio_encoder = AudioEncoder(config)
        self.video_gate = ModalityGate(config.width)
        self.audio_gate = ModalityGate(config.width)
        # Modality embeddings tell video from audio tokens wherever they are mixed.
        self.modality = LearnedTokens(2, config.width)
        if config.fusion == "chunked":
            self.combiner = build_combiner(config)
            self.autoregressive = TimeAlignedAutoregressive(config)
        else:
            self.joint = Transformer(
                config.width, config.combiner_depth + config.ar_depth, config.heads,
                config.mlp_ratio, config.dropout,
            )
        self.classifier = ClassificationHead(config.width, config.num_classes)
        self.text_decoder = TextDecoder(config)

    def forward(self, batch: dict[str, torch.Tensor]) -> MirasolOutput:
        """Encode video and audio into latents and class logits."""
        video, audio = batch["video"], batch["audio"]
        check_batch_sizes(video, audio)
        v = self.video_gate(self.video_encoder(video), batch["video_present"])
        a = self.audio_gate(self.audio_encoder(audio, v.shape[1]), batch["audio_present"])
        video_role, audio_role = self.modality(v.shape[0]).unbind(dim=1)
        v = v + video_role[:, None, None]
        a = a + audio_role[:, None, None]
        if self.config.fusion == "chunked":
            combined = self.combiner(v, a)
            latents, latent_loss = self.autoregressive(combined)
        else:
            chunk_position = sincos_1d(torch.arange(v.shape[1]), self.config.width).to(v)
            tokens = torch.cat([v, a], dim=2) + chunk_position[None, :, None]
            latents, latent_loss = self.joint(rearrange(tokens, "b t n d -> b (t n) d")), None
        return MirasolOutput(self.classifier(latents), latents, latent_loss)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **kwargs) -> list[str]:
        """Generated text for a batch: each sample's answer to its prompt (``text`` up to
        ``prompt_length``), or a caption where it has none (see `TextDecoder.generate` for
        the decoding options)."""
        return generate_text(self, batch, **kwargs)


def generate_text(model: nn.Module, batch: dict[str, torch.Tensor], **kwargs) -> list[str]:
    """`model`'s text decoder continues each sample's prompt, reading the model's latents."""
    latents = model(batch).latents
    prompt_length = batch.get("prompt_length")
    prompts = batch["text"] if prompt_length is not None else None
    return model.text_decoder.generate(latents, prompts, prompt_length, **kwargs)
