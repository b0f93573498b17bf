"""Procedural audio-visual clips whose label needs both modalities and their alignment.

A clip shows a moving object that flashes at a few visual events, over a sound track of
noise with tone bursts. The label combines three attributes:

- the object's shape, which only the video shows;
- the pitch of the tones, which only the audio carries;
- whether the tones coincide with the flashes (in sync) or fall in other time slots
  (off beat), which needs both modalities and their time alignment.

So a model given only the video, or only the audio, cannot beat 1 / (2 x the other
modality's attribute count) on the full label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmirasol.data.batch import Sample, normalize_video
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.tokenizer import ByteTokenizer

# Ordered so that the tasks with few shapes get the most distinct ones: at 32 x 32 pixels a square
# and a disc of the same radius differ in a few edge pixels only, and the tiny model could not tell
# them apart (shape stayed at chance while pitch and sync reached 100 %).
SHAPES = ("disc", "cross", "square", "triangle")
COLOURS = {
    "red": (0.9, 0.2, 0.2), "green": (0.2, 0.85, 0.3), "blue": (0.25, 0.4, 0.95),
    "yellow": (0.9, 0.85, 0.2), "purple": (0.7, 0.3, 0.85), "orange": (0.95, 0.55, 0.15),
}
PITCH_RANGE_HZ = (300.0, 2400.0)
TONE_SECONDS = 0.15
FLASH_FRAMES = 2
DIM_OBJECT = 0.0  # object brightness between flashes (a strobe: it shows only when it flashes)


@dataclass(frozen=True)
class DomainShift:
    """Per-client appearance and recording conditions (feature shift)."""

    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain
    brightness: float = 0.0  # added to every pixel
    camera_noise: float = 0.02  # pixel noise std
    audio_noise: float = 0.02  # background noise std
    audio_gain: float = 1.0

    @classmethod
    def random(cls, seed: int, strength: float = 1.0) -> "DomainShift":
        """A reproducible random domain; `strength` 0 gives the neutral domain."""
        rng = np.random.default_rng(seed)
        return cls(
            colour=tuple(float(c) for c in 1.0 + strength * rng.uniform(-0.45, 0.45, size=3)),
            brightness=float(strength * rng.uniform(-0.2, 0.2)),
            camera_noise=float(0.02 + strength * rng.uniform(0.0, 0.08)),
            audio_noise=float(0.02 + strength * rng.uniform(0.0, 0.08)),
            audio_gain=float(math.exp(strength * rng.uniform(-0.7, 0.7))),
        )


@dataclass(frozen=True)
class SyntheticConfig:
    """The task's knobs. `for_model` matches a model config's input geometry."""

    num_classes: int = 8
    num_frames: int = 16
    fps: float = 8.0
    image_size: int = 32
    sample_rate: int = 16_000
    slot_frames: int = 4  # visual events and tones fall in slots of this many frames
    max_text_len: int = 64
    # The public pre-training variant: the same kind of clips with the other shapes and other
    # pitches, so a model pre-trained on it must still learn the main task's attributes.
    public: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.num_classes % 2:
            raise ValueError(f"num_classes must be even and >= 2, got {self.num_classes}")
        shapes, pitches = self.attribute_counts
        if shapes > len(SHAPES) or pitches > 4:
            raise ValueError(
                f"num_classes {self.num_classes} needs {shapes} shapes x {pitches} pitches x 2; "
                f"at most {len(SHAPES)} shapes and 4 pitches exist (num_classes <= 32)"
            )
        if self.public and 2 * shapes > len(SHAPES):
            raise ValueError(
                f"the public variant needs {shapes} shapes besides the main task's {shapes}; "
                f"only {len(SHAPES)} exist (public needs num_classes <= {len(SHAPES) * 2})"
            )
        if self.num_frames % self.slot_frames or self.num_slots < 2:
            raise ValueError(
                f"num_frames {self.num_frames} must be at least two slots of {self.slot_frames} frames"
            )
        if self.slot_frames < FLASH_FRAMES:
            raise ValueError(f"slot_frames must be at least {FLASH_FRAMES}")

    @classmethod
    def for_model(cls, model: MirasolConfig, **knobs) -> "SyntheticConfig":
        """Clips in the model's geometry (frames, fps, resolution), one slot per chunk."""
        values = dict(
            num_classes=model.num_classes, num_frames=model.num_frames, fps=model.fps,
            image_size=model.image_size, sample_rate=model.sample_rate,
            slot_frames=model.frames_per_chunk, max_text_len=model.max_text_len,
        )
        values.update(knobs)
        return cls(**values)

    @property
    def attribute_counts(self) -> tuple[int, int]:
        """(shapes, pitches) with shapes x pitches x 2 = num_classes, as balanced as possible."""
        half = self.num_classes // 2
        shapes = next(d for d in range(1, half + 1) if half % d == 0 and d * d >= half)
        return shapes, half // shapes

    @property
    def num_slots(self) -> int:
        return self.num_frames // self.slot_frames

    @property
    def num_samples(self) -> int:
        return round(self.num_frames / self.fps * self.sample_rate)

    @property
    def events_per_clip(self) -> int:
        return max(1, min(2, self.num_slots // 2))

    @property
    def shape_names(self) -> tuple[str, ...]:
        """The task's shapes: the first ones, or (public) the next ones."""
        shapes, _ = self.attribute_counts
        first = shapes if self.public else 0
        return SHAPES[first : first + shapes]

    def pitches_hz(self) -> list[float]:
        """Tone frequencies, evenly spaced in log frequency (public: the midpoints in between)."""
        _, pitches = self.attribute_counts
        low, high = PITCH_RANGE_HZ
        if self.public:
            return [low * (high / low) ** ((i + 0.5) / max(pitches, 2)) for i in range(pitches)]
        if pitches == 1:
            return [math.sqrt(low * high)]
        return [low * (high / low) ** (i / (pitches - 1)) for i in range(pitches)]

    def decompose(self, label: int) -> tuple[int, int, bool]:
        """label -> (shape index, pitch index, in sync)."""
        _, pitches = self.attribute_counts
        return label // 2 // pitches, label // 2 % pitches, bool(label % 2)

    def caption(self, label: int, colour: str) -> str:
        """The caption of a clip of class `label` whose object is `colour`."""
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {self.describe(label)}"

    def class_prompts(self, label: int) -> list[str]:
        """Zero-shot prompts of class `label`: its caption with each object colour."""
        return [self.caption(label, colour) for colour in COLOURS]

    def describe(self, label: int) -> str:
        shape, pitch, in_sync = self.decompose(label)
        names = pitch_names(self.attribute_counts[1])
        return f"{self.shape_names[shape]}, {names[pitch]} tones, {'in sync' if in_sync else 'off beat'}"


def pitch_names(count: int) -> list[str]:
    return {1: ["mid"], 2: ["low", "high"], 3: ["low", "mid", "high"]}.get(
        count, ["low", "mid-low", "mid-high", "high"]
    )


@dataclass
class RawClip:
    """A rendered clip before tensor conversion."""

    frames: np.ndarray  # N x H x W x 3 uint8
    audio: np.ndarray  # M float32 in [-1, 1], 16 kHz mono
    label: int
    caption: str
    fps: float
    sample_rate: int
    event_frames: list[int] = field(default_factory=list)
    tone_frames: list[int] = field(default_factory=list)
    colour: str = ""
    scene: "Scene | None" = None


@dataclass
class Scene:
    """What happens in a clip before it is drawn: its label and when the events fall."""

    label: int
    event_frames: list[int]  # first frame of each flash
    tone_frames: list[int]  # first frame of each tone burst
    tone_pitches_hz: list[float]  # the pitch of each tone burst


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.85
    if shape == "disc":
        return dx**2 + dy**2 <= radius**2
    if shape == "triangle":
        return (dy <= radius * 0.8) & (np.abs(dx) * 2 <= dy + radius)
    arm = radius / 3  # cross
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))


class SyntheticAVDataset(Dataset):
    """`num_clips` deterministic clips; clip i depends only on (seed, i) and the domain."""

    def __init__(
        self,
        config: SyntheticConfig,
        num_clips: int,
        seed: int = 0,
        domain: DomainShift | None = None,
        drop_video: bool = False,
        drop_audio: bool = False,
        labels: np.ndarray | None = None,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be positive, got {num_clips}")
        self.config = config
        self.seed = seed
        self.domain = domain or DomainShift()
        self.drop_video = drop_video
        self.drop_audio = drop_audio
        self.tokenizer = ByteTokenizer()
        if labels is None:
            labels = np.random.default_rng([seed, 0xC1A55]).integers(config.num_classes, size=num_clips)
        elif len(labels) != num_clips or labels.min() < 0 or labels.max() >= config.num_classes:
            raise ValueError(f"labels must be {num_clips} values in [0, {config.num_classes})")
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def render_clip(self, index: int) -> RawClip:
        """Render clip `index` as uint8 frames and a float waveform."""
        rng = np.random.default_rng([self.seed, index])
        label = int(self.labels[index])
        return self.render_scene(rng, self.draw_scene(rng, label))

    def draw_scene(self, rng: np.random.Generator, label: int) -> Scene:
        """When things happen: flashes in some slots; tones in the same or in other slots."""
        cfg = self.config
        _, pitch_index, in_sync = cfg.decompose(label)
        slots = rng.permutation(cfg.num_slots)
        event_slots = np.sort(slots[: cfg.events_per_clip])
        tone_slots = event_slots if in_sync else np.sort(slots[cfg.events_per_clip : 2 * cfg.events_per_clip])
        phase = rng.integers(0, cfg.slot_frames - FLASH_FRAMES + 1, size=cfg.events_per_clip)
        event_frames = [int(s * cfg.slot_frames + p) for s, p in zip(event_slots, phase)]
        tone_frames = [int(s * cfg.slot_frames + p) for s, p in zip(tone_slots, phase)]
        pitch = cfg.pitches_hz()[pitch_index]
        return Scene(label, event_frames, tone_frames, [pitch] * len(tone_frames))

    def render_scene(self, rng: np.random.Generator, scene: Scene) -> RawClip:
        """Frames and sound of `scene`, in the dataset's domain (draws from `rng`)."""
        cfg, domain = self.config, self.domain
        shape_index, _, _ = cfg.decompose(scene.label)
        frames = self._render_video(rng, cfg.shape_names[shape_index], scene.event_frames)
        audio = self._render_audio(rng, scene.tone_pitches_hz, scene.tone_frames)

        colour = rng.choice(list(COLOURS))
        caption = cfg.caption(scene.label, str(colour))
        frames = self._apply_colour(frames, COLOURS[colour], scene.event_frames)
        frames = np.clip(frames * np.asarray(domain.colour) + domain.brightness, 0.0, 1.0)
        frames = frames + rng.normal(0.0, domain.camera_noise, size=frames.shape)
        frames_u8 = np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return RawClip(frames_u8, audio, scene.label, caption, cfg.fps, cfg.sample_rate,
                       list(scene.event_frames), list(scene.tone_frames), str(colour), scene)

    def _render_video(self, rng: np.random.Generator, shape: str, event_frames: list[int]) -> np.ndarray:
        """Object mask per frame (N x H x W) moving with bounces; returned as a float mask."""
        cfg = self.config
        size = cfg.image_size
        radius = size * 0.18
        position = rng.uniform(radius, size - radius, size=2)
        velocity = rng.uniform(-1, 1, size=2)
        velocity *= size * 0.06 / max(np.linalg.norm(velocity), 1e-6)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        masks = np.empty((cfg.num_frames, size, size), dtype=np.float32)
        for f in range(cfg.num_frames):
            masks[f] = _shape_mask(shape, xs - position[0], ys - position[1], radius)
            position = position + velocity
            for axis in range(2):
                if not radius <= position[axis] <= size - radius:
                    velocity[axis] = -velocity[axis]
                    position[axis] = np.clip(position[axis], radius, size - radius)
        return masks

    def _apply_colour(self, masks: np.ndarray, colour: tuple[float, float, float], event_frames: list[int]) -> np.ndarray:
        """Dark background and a moving object that shows only while it flashes (a strobe).

        The evidence of the object's shape and the visual events sit in the same frames, as the
        tones that carry the pitch are the audio events.
        """
        cfg = self.config
        flash = np.zeros((cfg.num_frames, 1, 1, 1), dtype=np.float32)
        for start in event_frames:
            flash[start : start + FLASH_FRAMES] = 1.0
        background = 0.1
        brightness = DIM_OBJECT + (1.0 - DIM_OBJECT) * flash
        object_colour = background + brightness * (np.asarray(colour, dtype=np.float32) - background)
        return background + masks[..., None] * (object_colour - background)

    def _render_audio(self, rng: np.random.Generator, pitches_hz: list[float], tone_frames: list[int]) -> np.ndarray:
        """Noise with a tone burst at each of `tone_frames`, of the matching pitch."""
        cfg, domain = self.config, self.domain
        audio = rng.normal(0.0, domain.audio_noise, size=cfg.num_samples)
        tone_len = round(TONE_SECONDS * cfg.sample_rate)
        t = np.arange(tone_len) / cfg.sample_rate
        tone_phase = rng.uniform(0, 2 * np.pi)
        for frame, pitch_hz in zip(tone_frames, pitches_hz):
            tone = 0.5 * np.sin(2 * np.pi * pitch_hz * t + tone_phase) * np.hanning(tone_len)
            start = round(frame / cfg.fps * cfg.sample_rate)
            end = min(start + tone_len, cfg.num_samples)
            audio[start:end] += tone[: end - start]
        return np.clip(audio * domain.audio_gain, -1.0, 1.0).astype(np.float32)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} out of range for {len(self)} clips")
        return self.to_sample(self.render_clip(index))

    def to_sample(self, clip: RawClip) -> Sample:
        """A rendered clip as the model's sample (its caption as the text)."""
        video = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div_(255.0)
        return {
            "video": torch.zeros_like(video) if self.drop_video else normalize_video(video),
            "audio": torch.zeros(len(clip.audio)) if self.drop_audio else torch.from_numpy(clip.audio),
            "video_present": torch.tensor(not self.drop_video),
            "audio_present": torch.tensor(not self.drop_audio),
            "label": torch.tensor(clip.label, dtype=torch.long),
            "text": self.tokenizer.encode(clip.caption, self.config.max_text_len),
        }
