"""LEAF examples as the samples a model takes.

LEAF's reference models read one input key (``image``, ``tokens`` or ``features``, the task's
kind) and ``label``. Mirasol reads clips (`fedmirasol.data.batch`): a LEAF image becomes a
still clip of the model's frames (one frame in the LEAF model configs), grey images repeated
over the three colour channels, resized to the model's image size if it differs, normalized
as video frames are; it has no audio (``audio_present`` false: the missing-modality path, the
model never reads the zero waveform) and no caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedmirasol.data.batch import Sample, normalize_video
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.tokenizer import ByteTokenizer


def reference_sample(kind: str, value: torch.Tensor, label: int) -> Sample:
    """A LEAF reference model's sample: the input under its kind's key, and the label."""
    return {kind: value, "label": torch.tensor(label, dtype=torch.long)}


def image_clip(image: torch.Tensor, label: int, model: MirasolConfig) -> Sample:
    """A ``C x H x W`` image in [0, 1] as a still, silent clip of `model`'s geometry."""
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    size = model.image_size
    if rgb.shape[-2:] != (size, size):
        rgb = F.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    frame = normalize_video(rgb.float())
    return {
        "video": frame[None].expand(model.num_frames, -1, -1, -1).contiguous(),
        "audio": torch.zeros(model.num_samples),
        "video_present": torch.tensor(True),
        "audio_present": torch.tensor(False),
        "label": torch.tensor(label, dtype=torch.long),
        "text": ByteTokenizer().empty(model.max_text_len),
    }


class SampleList(Dataset):
    """Samples held in memory (a LEAF user's data is small; clients see it every round)."""

    def __init__(self, samples: list[Sample], labels: list[int]) -> None:
        self.samples = samples
        self.labels = labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]
