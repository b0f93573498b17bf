"""Data poisoning for simulated attackers, and the poisoned test sets that measure it.

- Label flipping: every training clip of the attacker is relabelled ``num_classes - 1 - label``.
- Backdoor (Gu et al. 2017; Bagdasaryan et al. 2020): a share of the attacker's training clips
  carry a trigger and are relabelled to the target class. The trigger is visual (a white
  square in the top-left corner of every frame) or audible (a steady 3.6 kHz tone, above the
  synthetic task's pitches, over the whole clip).

The attack success rate is the accuracy on a test set poisoned the same way: for the backdoor,
the clips of every other class with the trigger, labelled with the target; for label flipping,
every clip labelled with its flipped label (clips whose label flips to itself left out).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmirasol.data.batch import VIDEO_MEAN, VIDEO_STD, Sample

TRIGGER_TONE_HZ = 3600.0
TRIGGER_TONE_AMPLITUDE = 0.25
TRIGGER_PATCH_FRACTION = 1 / 8  # of the frame's side


class SampleList(Dataset):
    """Samples held in memory."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def flipped_label(label: int, num_classes: int) -> int:
    return num_classes - 1 - label


def stamp_trigger(sample: Sample, trigger: str, sample_rate: int) -> Sample:
    """`sample` with the backdoor trigger (a new sample; the input is left as it is)."""
    stamped = dict(sample)
    if trigger == "video":
        video = sample["video"].clone()
        side = max(2, math.ceil(video.shape[-1] * TRIGGER_PATCH_FRACTION))
        white = (1.0 - torch.tensor(VIDEO_MEAN)) / torch.tensor(VIDEO_STD)
        video[..., :side, :side] = white.view(3, 1, 1)
        stamped["video"], stamped["video_present"] = video, torch.tensor(True)
    elif trigger == "audio":
        audio = sample["audio"]
        t = torch.arange(audio.shape[-1], dtype=torch.float32) / sample_rate
        tone = TRIGGER_TONE_AMPLITUDE * torch.sin(2 * math.pi * TRIGGER_TONE_HZ * t)
        stamped["audio"] = (audio + tone).clamp(-1.0, 1.0)
        stamped["audio_present"] = torch.tensor(True)
    else:
        raise ValueError(f"unknown trigger {trigger!r} (video or audio)")
    return stamped


def _relabelled(sample: Sample, label: int) -> Sample:
    return {**sample, "label": torch.tensor(label, dtype=torch.long)}


def label_flipped(dataset: Dataset, num_classes: int) -> SampleList:
    """Every clip of `dataset` with its label flipped (unlabelled clips as they are)."""
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return SampleList([_relabelled(s, flipped_label(int(s["label"]), num_classes))
                       if int(s["label"]) >= 0 else s for s in samples])


def backdoored(dataset: Dataset, *, target: int, trigger: str, fraction: float,
               sample_rate: int, seed: int) -> SampleList:
    """`dataset` with ceil(`fraction` x its size) clips (drawn with `seed`) stamped with the
    trigger and labelled `target`; the rest unchanged, so the model keeps its clean accuracy."""
    size = len(dataset)  # type: ignore[arg-type]
    count = min(size, math.ceil(fraction * size))
    chosen = set(np.random.default_rng(seed).choice(size, count, replace=False).tolist())
    return SampleList([_relabelled(stamp_trigger(dataset[i], trigger, sample_rate), target)
                       if i in chosen else dataset[i] for i in range(size)])


def backdoor_test_set(dataset: Dataset, *, target: int, trigger: str,
                      sample_rate: int) -> SampleList:
    """The clips of `dataset` not of class `target`, with the trigger, labelled `target`: the
    accuracy on it is the backdoor's attack success rate."""
    return SampleList([_relabelled(stamp_trigger(s, trigger, sample_rate), target)
                       for s in (dataset[i] for i in range(len(dataset)))  # type: ignore[arg-type]
                       if int(s["label"]) not in (target, -1)])


def label_flip_test_set(dataset: Dataset, num_classes: int) -> SampleList:
    """The clips of `dataset` whose label flips to another one, labelled with the flipped
    label: the accuracy on it is label flipping's attack success rate."""
    flipped = label_flipped(dataset, num_classes)
    return SampleList([s for s in flipped.samples
                       if int(s["label"]) >= 0
                       and int(s["label"]) != flipped_label(int(s["label"]), num_classes)])
