"""Audio encoder: log-mel spectrogram per chunk, 2D patches, then a ViT within each chunk."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from fedmirasol.models.attention import Transformer
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.position import patch_centres, sincos_2d

WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
LOG_FLOOR = 1e-6
# Fixed normalization of log-mel values (log of power): maps silence (the floor) to about -1.5
# and a full-scale tone to about +1.5.
LOG_MEL_SHIFT = 4.0
LOG_MEL_SCALE = 6.0


def split_audio_chunks(audio: torch.Tensor, num_chunks: int, samples_per_chunk: int) -> torch.Tensor:
    """``B x M`` waveform -> ``B x T x S`` contiguous spans: chunk t is samples [t*S, (t+1)*S).

    Raises when the waveform does not cover exactly the seconds of the video chunks.
    """
    expected = num_chunks * samples_per_chunk
    if audio.shape[-1] != expected:
        raise ValueError(
            f"audio has {audio.shape[-1]} samples but {num_chunks} video chunks cover "
            f"{expected} samples ({samples_per_chunk} per chunk); audio and video must span "
            "the same seconds"
        )
    return audio.reshape(audio.shape[0], num_chunks, samples_per_chunk)


class LogMel(nn.Module):
    """16 kHz waveform spans -> normalized log-mel, 25 ms windows and 10 ms hops.

    Frames never straddle a chunk boundary (no centre padding), so every spectrogram frame of
    chunk t comes from the seconds of chunk t.
    """

    def __init__(self, sample_rate: int, n_mels: int) -> None:
        super().__init__()
        window = round(WINDOW_SECONDS * sample_rate)
        # The filterbank is a small fixed buffer; torchaudio checks its values while building
        # it, which the meta device cannot do, so it is always built on the CPU.
        with torch.device("cpu"):
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=window,
                win_length=window,
                hop_length=round(HOP_SECONDS * sample_rate),
                n_mels=n_mels,
                center=False,
                power=2.0,
                norm="slaney",
                mel_scale="slaney",
            )

    def forward(self, spans: torch.Tensor) -> torch.Tensor:
        """``... x S`` samples -> ``... x frames x n_mels``."""
        with torch.autocast(device_type=spans.device.type, enabled=False):
            power = self.mel(spans.float())
        log_mel = (torch.log(power + LOG_FLOOR) + LOG_MEL_SHIFT) / LOG_MEL_SCALE
        return log_mel.transpose(-1, -2)


class AudioEncoder(nn.Module):
    """``B x M`` waveform -> ``B x T x s x width`` tokens for T chunks."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.samples_per_chunk = config.samples_per_chunk
        self.patch = config.audio_patch
        self.log_mel = LogMel(config.sample_rate, config.n_mels)
        # B x T x frames x n_mels: one channel per mel bin, on the last axis.
        self.input_norm = optional_input_norm(config.input_norm, config.n_mels, dim=-1)
        window = round(WINDOW_SECONDS * config.sample_rate)
        hop = round(HOP_SECONDS * config.sample_rate)
        frames = 1 + (config.samples_per_chunk - window) // hop
        if frames < 1:
            raise ValueError(
                f"an audio chunk of {config.samples_per_chunk} samples is shorter than one "
                f"{window}-sample spectrogram window"
            )
        patch_t, patch_f = self.patch
        if config.n_mels % patch_f:
            raise ValueError(f"n_mels {config.n_mels} is not a multiple of the patch's {patch_f} bins")
        self.frames = frames
        self.padded_frames = math.ceil(frames / patch_t) * patch_t
        self.projection = nn.Linear(patch_t * patch_f, config.width)
        self.norm = nn.LayerNorm(config.width)
        grid_t, grid_f = self.padded_frames // patch_t, config.n_mels // patch_f
        centres = patch_centres((grid_t, grid_f), (patch_t, patch_f), (patch_t, patch_f))
        self.register_buffer("centres", centres, persistent=False)  # tokens x 2 (time, mel)
        self.register_buffer("position", sincos_2d(centres, config.width), persistent=False)
        self.transformer = Transformer(
            config.width, config.audio_depth, config.heads, config.mlp_ratio, config.dropout
        )

    @property
    def tokens_per_chunk(self) -> int:
        return self.position.shape[0]

    def spectrogram(self, audio: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """``B x M`` -> ``B x T x frames x n_mels`` normalized log-mel, padded to whole patches."""
        spans = split_audio_chunks(audio, num_chunks, self.samples_per_chunk)
        spec = self.log_mel(spans)
        if self.input_norm is not None:
            spec = self.input_norm(spec)
        pad = self.padded_frames - self.frames
        if pad:
            silence = (math.log(LOG_FLOOR) + LOG_MEL_SHIFT) / LOG_MEL_SCALE
            spec = F.pad(spec, (0, 0, 0, pad), value=silence)
        return spec

    def forward(self, audio: torch.Tensor, num_chunks: int) -> torch.Tensor:
        return self.transformer(self.embed(self.patches(audio, num_chunks)))

    def patches(self, audio: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """``B x M`` waveform -> ``B x T x tokens x (pt pf)`` log-mel patches of each chunk."""
        if audio.ndim != 2:
            raise ValueError(f"audio must be B x samples, got shape {tuple(audio.shape)}")
        spec = self.spectrogram(audio, num_chunks)
        patch_t, patch_f = self.patch
        return rearrange(spec, "b t (gt pt) (gf pf) -> b t (gt gf) (pt pf)", pt=patch_t, pf=patch_f)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches -> ``B x T x tokens x width`` tokens with their positions, before the
        transformer (AudioMAE-style masking runs it on the visible ones only)."""
        return self.norm(self.projection(patches.to(self.projection.weight.dtype))) + self.position
