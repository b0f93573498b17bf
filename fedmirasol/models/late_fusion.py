r"""The late-fusion baseline: TimeSformer + AST, each pooled, fused by a weighted concatenation.

    video -> TimeSformer -> v  \
                                [v ; alpha * a] -> FC head -> logits
    audio -> AST         -> a  /

alpha weighs one modality (audio by default, video if the config says so) and is either fixed
or learned. With `text_weight` > 0 a `TextDecoder` (Mirasol's) cross-attends to the two pooled
features, so late fusion answers questions and captions through its own decoder. A sample that lacks a modality gets a learned 'absent' feature in its place, as in
Mirasol: the placeholder tensor is never read as data.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.ast_encoder import AudioSpectrogramTransformer
from fedmirasol.models.attention import LearnedTokens
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.mirasol import MirasolOutput, ModalityGate, check_batch_sizes, generate_text
from fedmirasol.models.text_decoder import TextDecoder
from fedmirasol.models.timesformer import TimeSformer

# Hidden sizes of the published head (1536 -> 1024 -> 512 -> classes at width 768), as
# fractions of the width so smaller models scale them proportionally.
HEAD_FRACTIONS = (4 / 3, 2 / 3)


class ModalityWeight(nn.Module):
    """alpha, fixed or learned; a learned alpha is a 1 x 1 nn.Embedding (Opacus-friendly)."""

    def __init__(self, alpha: float, learned: bool) -> None:
        super().__init__()
        self.fixed = float(alpha)
        self.learned = LearnedTokens(1, 1) if learned else None
        if self.learned is not None:
            nn.init.constant_(self.learned.embedding.weight, alpha)

    @property
    def value(self) -> float:
        """The current alpha."""
        return self.fixed if self.learned is None else self.learned.embedding.weight.item()

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Scale a ``B x d`` feature by alpha."""
        if self.learned is None:
            return feature * self.fixed
        return feature * self.learned(feature.shape[0]).view(-1, 1).to(feature.dtype)


class FusionHead(nn.Sequential):
    """``B x 2d`` -> class logits: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear."""

    def __init__(self, width: int, num_classes: int, dropout: float) -> None:
        first, second = (max(1, round(width * f)) for f in HEAD_FRACTIONS)
        super().__init__(
            nn.Linear(2 * width, first), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(first, second), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(second, num_classes),
        )


def _gate(gate: ModalityGate, feature: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mirasol's gate on a pooled ``B x d`` feature (it works on ``B x T x n x d`` tokens)."""
    return gate(feature[:, None, None], present)[:, 0, 0]


class LateFusion(nn.Module):
    """TimeSformer + AST late fusion; same batch in and `MirasolOutput` out as `Mirasol`.

    `latents` holds the two fused features (``B x 2 x d``: video, audio after alpha);
    `latent_loss` is None (nothing is predicted across time).
    """

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        if config.architecture != "latefusion":
            raise ValueError(f"LateFusion needs architecture 'latefusion', got {config.architecture!r}")
        self.config = config
        self.video_encoder = TimeSformer(config)
        self.audio_encoder = AudioSpectrogramTransformer(config)
        self.video_gate = ModalityGate(config.width)
        self.audio_gate = ModalityGate(config.width)
        self.modality_weight = ModalityWeight(config.alpha, config.learn_alpha)
        self.head = FusionHead(config.width, config.num_classes, config.head_dropout)
        if config.text_weight > 0:
            self.text_decoder = TextDecoder(config)
        if config.freeze_encoders:
            for encoder in (self.video_encoder, self.audio_encoder):
                encoder.requires_grad_(False)
                if encoder.input_norm is not None:  # the input stem adapts to the client's
                    encoder.input_norm.requires_grad_(True)  # domain: it stays trainable

    def forward(self, batch: dict[str, torch.Tensor]) -> MirasolOutput:
        video, audio = batch["video"], batch["audio"]
        check_batch_sizes(video, audio)
        features = {
            "video": _gate(self.video_gate, self.video_encoder(video), batch["video_present"]),
            "audio": _gate(self.audio_gate, self.audio_encoder(audio), batch["audio_present"]),
        }
        weighted = self.config.alpha_modality
        features[weighted] = self.modality_weight(features[weighted])
        fused = torch.cat([features["video"], features["audio"]], dim=-1)
        latents = torch.stack([features["video"], features["audio"]], dim=1)  # B x 2 x d
        return MirasolOutput(self.head(fused), latents, None)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **kwargs) -> list[str]:
        """Generated answers or captions (needs the text decoder: `text_weight` > 0)."""
        if not hasattr(self, "text_decoder"):
            raise ValueError("this late-fusion model has no text decoder (text_weight = 0)")
        return generate_text(self, batch, **kwargs)
