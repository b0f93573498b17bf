"""The sample and batch format shared by every data source and the models.

A sample is a dict:

- ``video``: float tensor ``N x 3 x H x W``, normalized (see `normalize_video`).
- ``audio``: float tensor ``M`` of 16 kHz mono samples covering the same seconds as the video.
- ``video_present`` / ``audio_present``: bool scalars. A missing modality is marked here; its
  tensor is still there (zeros, so samples stack) but the model never reads it as data.
- ``label``: int64 scalar, or -1 when the sample has no label.
- ``text``: int64 tensor ``L`` of caption tokens (BOS ... EOS, padded with PAD), or all PAD
  when the sample has no caption.
- ``prompt_length`` (optional, default 0): int64 scalar, how many leading tokens of ``text``
  (BOS included) are a prompt, e.g. a question: the decoder reads them and is not trained to
  predict them.
- ``question_type`` (optional, default -1): int64 scalar, the index of the sample's question
  type in its dataset's ``question_types`` (`fedmirasol.data.videoqa`); -1 for no question.

`collate` stacks samples into the same keys with a leading batch axis, filling an optional
key a sample lacks with its default. LEAF's reference models (`fedmirasol.data.leaf`) take
samples of another form, ``label`` and one input (``image``, ``tokens`` or ``features``):
`collate` stacks whatever keys the samples share.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

Sample = dict[str, torch.Tensor]


class UnavailableSample(LookupError):
    """A dataset item that cannot be produced (its file failed to decode) and is not replaced
    by another: the caller drops it (under DP a substitute would count one clip twice)."""

Batch = dict[str, torch.Tensor]

BATCH_KEYS = ("video", "audio", "video_present", "audio_present", "label", "text")
# Keys every batch carries, with the value of a sample that does not set them.
OPTIONAL_KEYS = {"prompt_length": 0, "question_type": -1}

# ImageNet statistics: what video encoders are conventionally normalized with.
VIDEO_MEAN = (0.485, 0.456, 0.406)
VIDEO_STD = (0.229, 0.224, 0.225)


def normalize_video(frames: torch.Tensor) -> torch.Tensor:
    """Map ``... x 3 x H x W`` frames in [0, 1] to the model's normalized range."""
    mean = frames.new_tensor(VIDEO_MEAN).view(3, 1, 1)
    std = frames.new_tensor(VIDEO_STD).view(3, 1, 1)
    return (frames - mean) / std


def collate(samples: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
    """Stack samples into a batch, naming the key whose shapes disagree or that a sample lacks."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = [key for key in samples[0] if key not in OPTIONAL_KEYS]
    for sample in samples[1:]:
        if {key for key in sample if key not in OPTIONAL_KEYS} != set(keys):
            raise ValueError(f"samples disagree on their keys: {sorted(keys)} and "
                             f"{sorted(sample)}")
    batch: Batch = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"samples disagree on the shape of {key!r}: {sorted(shapes)}")
        batch[key] = torch.stack(values)
    for key, default in OPTIONAL_KEYS.items():
        batch[key] = torch.tensor([int(sample.get(key, default)) for sample in samples],
                                  dtype=torch.long)
    return batch


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> Batch:
    """Move every tensor of a batch to `device`."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
