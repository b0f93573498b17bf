"""The optional input normalization stem: a learned per-channel affine on the model's inputs.

A client that records in its own domain (a colour cast, a brighter camera, a quieter microphone)
shifts the model's inputs channel by channel: a colour gain scales each pixel channel, a
brightness offset shifts them all, an audio gain adds a constant to every log-mel bin. BatchNorm
would absorb such a shift in its running statistics, and FedBN keeps those statistics on each
client; but BatchNorm mixes the samples of a batch and is not compatible with DP-SGD (Opacus).

`InputNorm` is the DP-compatible stand-in: ``y = gain * x + shift`` per channel, i.e. a
normalization ``(x - mean) / std`` whose per-channel statistics are *learned parameters*
(``gain = 1 / std``, ``shift = -mean / std``) rather than batch statistics. Every sample is
transformed on its own, so per-sample gradients stay exact.

Units: ``gain = RATE * weight`` and ``shift = RATE * bias`` (the identity: weight 1 / RATE, bias
0). A stem has a handful of parameters that must travel far (a colour gain of 0.35 needs a gain
near 3 to undo it); Adam moves a parameter by about the learning rate per step, so in plain
units a client's stem moved little in a whole run (measured: gains within 0.91-1.07 after the 16
rounds of `simulations/feature-shift.toml`). In these units one step moves the gain and the
shift by about RATE * lr (0.02 at lr 2e-3).

The affine is computed as a depthwise 1x1 convolution (``F.conv1d`` with one group per channel,
the parameters its kernel and bias), so every per-sample gradient machinery the project uses
handles it: PyTorch's expanded weights (`privacy.grad-sample-mode = "ew"` and "bk") support conv1d, and
Opacus' hooks mode, which has no grad sampler registered for this exact type, computes its
per-sample gradients with functorch through this module's own `forward`.

It is a normalization-type module (a subclass of `nn.GroupNorm` with one group per channel, and a
per-channel ``weight`` and ``bias``), so the module-type selector ``normalization``
(`split.local = "normalization"`, FedBN) keeps it on the client with the other normalization
layers.

`MirasolConfig.input_norm` (default off) adds one on the video pixels (3 colour channels) and one
on the log-mel spectrogram (one channel per mel bin) of both model families.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


RATE = 10.0
"""Parameter units: ``gain = RATE * weight``, ``shift = RATE * bias``."""


class InputNorm(nn.GroupNorm):
    """Learned per-channel ``gain * x + shift`` over axis `dim`; the identity at the start.

    ``weight`` is ``channels x 1 x 1`` (a depthwise conv1d kernel), ``bias`` ``channels``.
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__(num_groups=channels, num_channels=channels, affine=True)
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(channels, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, 1.0 / RATE)  # gain 1
        nn.init.zeros_(self.bias)  # shift 0

    @property
    def gain(self) -> torch.Tensor:
        return RATE * self.weight.detach().flatten()

    @property
    def shift(self) -> torch.Tensor:
        return RATE * self.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] != self.num_channels:
            raise ValueError(
                f"input norm expects {self.num_channels} channels on axis {self.dim}, "
                f"got shape {tuple(x.shape)}"
            )
        # B x ... x C x ... -> B x C x (everything else), the batch axis first throughout.
        moved = x.movedim(self.dim, 1)
        flat = moved.reshape(x.shape[0], self.num_channels, -1).to(self.bias.dtype)
        # The parameters go into conv1d untouched (expanded weights allow nothing else).
        y = F.conv1d(flat, self.weight, self.bias, groups=self.num_channels)
        return (RATE * y).to(x.dtype).reshape(moved.shape).movedim(1, self.dim)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, dim={self.dim}"


def optional_input_norm(enabled: bool, channels: int, dim: int) -> InputNorm | None:
    """An `InputNorm` when `enabled`, else None: with the stem off the model has exactly the
    modules and parameters it had before the stem existed (old checkpoints load unchanged)."""
    return InputNorm(channels, dim) if enabled else None
