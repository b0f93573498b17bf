"""Video question answering and captioning on the synthetic clips.

Each item is one clip and one question about it, asked as a text prompt that the text decoder
continues with the answer. The questions need the right modality, and time:

- ``shape``: what shape is it? (video only)
- ``pitch``: are the tones high or low? (audio only)
- ``sync``: do the tones match the flashes? (both, time-aligned)
- ``count``: how many flashes? (counting over the whole clip: 1 to 3 flashes)
- ``order``: what came first, the flash, the tone, or both together? (both, time-aligned)
- ``first`` / ``last``: what pitch is the first / last tone? (audio, a time: with
  `late_tone` every clip ends with one extra tone of its own pitch in the last quarter of its
  chunks, so ``last`` is answered from a late chunk only)
- ``caption``: the clip's caption, scored with CIDEr and BLEU-4 instead of exact match.

The item's question type is drawn per item (seeded) and is the pool's partition key
(`labels`): a Dirichlet split over it makes clients that are non-IID by question type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmirasol.data.batch import Sample
from fedmirasol.data.synthetic import (
    FLASH_FRAMES,
    DomainShift,
    RawClip,
    Scene,
    SyntheticAVDataset,
    SyntheticConfig,
    pitch_names,
)
from fedmirasol.data.questions import (
    CAPTION, DEFAULT_TYPES, OPEN, QUESTION_TYPES, QUESTIONS, parse_question_types,
)
from fedmirasol.models.tokenizer import ByteTokenizer

NUMBERS = ("zero", "one", "two", "three", "four")
MAX_EVENTS = 3
LATE_FRACTION = 0.25  # with late_tone: the extra tone falls in the last quarter of the chunks


@dataclass
class QAScene(Scene):
    """A scene with the facts the questions ask about."""

    in_sync: bool = False
    late_pitch: int | None = None  # pitch index of the extra late tone (late_tone clips)


class QAClips(SyntheticAVDataset):
    """The synthetic clips with 1 to `MAX_EVENTS` flashes (and as many tones) per clip and,
    with `late_tone`, one more tone late in the clip."""

    def __init__(self, config: SyntheticConfig, num_clips: int, seed: int = 0,
                 late_tone: bool = False, **kwargs) -> None:
        super().__init__(config, num_clips, seed=seed, **kwargs)
        self.late_tone = late_tone
        self.early_slots = config.num_slots - self.late_slots
        self.max_events = min(MAX_EVENTS, self.early_slots // 2)
        if self.max_events < 1 or (late_tone and self.late_slots < 1):
            raise ValueError(f"a clip of {config.num_slots} slots is too short for the QA clips "
                             f"(at least {4 if late_tone else 2} slots of {config.slot_frames} frames)")

    @property
    def late_slots(self) -> int:
        return max(1, int(self.config.num_slots * LATE_FRACTION)) if self.late_tone else 0

    def draw_scene(self, rng: np.random.Generator, label: int) -> QAScene:
        cfg = self.config
        _, pitch_index, in_sync = cfg.decompose(label)
        count = int(rng.integers(1, self.max_events + 1))
        slots = rng.permutation(self.early_slots)
        event_slots = np.sort(slots[:count])
        tone_slots = event_slots if in_sync else np.sort(slots[count: 2 * count])
        phase = rng.integers(0, cfg.slot_frames - FLASH_FRAMES + 1, size=count)
        event_frames = [int(s * cfg.slot_frames + p) for s, p in zip(event_slots, phase)]
        tone_frames = [int(s * cfg.slot_frames + p) for s, p in zip(tone_slots, phase)]
        pitches = cfg.pitches_hz()
        tone_pitches = [pitches[pitch_index]] * count
        late_pitch = None
        if self.late_tone:
            late_slot = int(rng.integers(self.early_slots, cfg.num_slots))
            late_pitch = int(rng.integers(len(pitches)))
            tone_frames.append(late_slot * cfg.slot_frames + int(phase[0]))
            tone_pitches.append(pitches[late_pitch])
        return QAScene(label, event_frames, tone_frames, tone_pitches, in_sync=in_sync,
                       late_pitch=late_pitch)


def answers(config: SyntheticConfig, clip: RawClip) -> dict[str, str]:
    """Every question type's answer for a rendered QA clip."""
    scene = clip.scene
    if not isinstance(scene, QAScene):
        raise TypeError("answers need a clip rendered by QAClips")
    shape, pitch, in_sync = config.decompose(scene.label)
    names = pitch_names(config.attribute_counts[1])
    first_flash, first_tone = scene.event_frames[0], scene.tone_frames[0]
    order = "both" if in_sync else ("flash" if first_flash < first_tone else "tone")
    last = names[scene.late_pitch] if scene.late_pitch is not None else names[pitch]
    return {
        "caption": clip.caption,
        "shape": config.shape_names[shape],
        "pitch": names[pitch],
        "sync": "yes" if in_sync else "no",
        "count": NUMBERS[len(scene.event_frames)],
        "order": order,
        "first": names[pitch],
        "last": last,
    }


class SyntheticVideoQA(Dataset):
    """`num_items` (clip, question) items: item i asks the question of type `labels[i]` (an
    index into `QUESTION_TYPES`, drawn from `question_types`) about clip i. Samples carry the
    clip's class ``label`` (trained with the model's `class_weight`: 0 for text alone),
    ``text`` = BOS question answer EOS, ``prompt_length`` and ``question_type``
    (= `labels[i]`)."""

    def __init__(
        self,
        config: SyntheticConfig,
        num_items: int,
        seed: int = 0,
        question_types: tuple[str, ...] = DEFAULT_TYPES,
        late_tone: bool = False,
        domain: DomainShift | None = None,
        drop_video: bool = False,
        drop_audio: bool = False,
    ) -> None:
        self.question_types = parse_question_types(question_types)
        self.clips = QAClips(config, num_items, seed=seed, late_tone=late_tone, domain=domain,
                             drop_video=drop_video, drop_audio=drop_audio)
        self.config = config
        type_ids = np.asarray([QUESTION_TYPES.index(kind) for kind in self.question_types])
        rng = np.random.default_rng([seed, 0x9A])
        self.labels = type_ids[rng.integers(len(type_ids), size=num_items)].astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def question(self, index: int) -> tuple[str, str, str]:
        """(question type, prompt, answer) of item `index` (renders its clip)."""
        kind = QUESTION_TYPES[int(self.labels[index])]
        clip = self.clips.render_clip(index)
        return kind, QUESTIONS[kind], answers(self.config, clip)[kind]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        clip = self.clips.render_clip(index)
        type_index = int(self.labels[index])
        kind = QUESTION_TYPES[type_index]
        prompt, answer = QUESTIONS[kind], answers(self.config, clip)[kind]
        sample = self.clips.to_sample(clip)
        sample.update(question_text(self.clips.tokenizer, self.config.max_text_len, prompt,
                                    answer, type_index))
        return sample


def question_text(tokenizer: ByteTokenizer, max_len: int, prompt: str, answer: str,
                  type_index: int) -> Sample:
    """A sample's text keys for `prompt` followed by `answer`: ``text`` (BOS prompt answer
    EOS), ``prompt_length`` (BOS + the prompt's bytes) and ``question_type``."""
    prompt_length = 1 + len(prompt.encode("utf-8"))
    if prompt_length + len(answer.encode("utf-8")) + 1 > max_len:
        raise ValueError(f"question {prompt!r} and its answer {answer!r} exceed max_text_len "
                         f"{max_len}")
    return {"text": tokenizer.encode(prompt + answer, max_len),
            "prompt_length": torch.tensor(prompt_length, dtype=torch.long),
            "question_type": torch.tensor(type_index, dtype=torch.long)}


def record_text(tokenizer: ByteTokenizer, max_len: int, *, question: str | None,
                answer: str | None, caption: str | None, score_captions: bool) -> Sample:
    """The text keys of a manifest row: its own question and answer (type ``open``); else its
    caption, as a ``caption:`` prompt scored like the synthetic captions when `score_captions`
    (the videoqa task) or as plain text otherwise; else no text."""
    if question and answer:
        return question_text(tokenizer, max_len, question.rstrip() + " ", answer,
                             QUESTION_TYPES.index(OPEN))
    if caption and score_captions:
        return question_text(tokenizer, max_len, QUESTIONS[CAPTION], caption,
                             QUESTION_TYPES.index(CAPTION))
    if caption:
        return {"text": tokenizer.encode(caption, max_len)}
    return {"text": tokenizer.empty(max_len)}
