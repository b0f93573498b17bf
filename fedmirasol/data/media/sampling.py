"""Which grid slots a clip takes, and which audio samples go with each of its chunks.

A decoded file is a grid of `K` slots at the model's fps (see `decode`). A clip is `N` slots
in `T = N / F` chunks of `F` frames; chunk t's audio is `samples_per_chunk` contiguous samples.

- ``center``: one window of N consecutive slots in the middle (evaluation).
- ``random``: one window of N consecutive slots at a random place (training).
- ``dense``: `num_clips` windows spread evenly from start to end; predictions are averaged
  over them (`average_clip_predictions`) at evaluation.
- ``uniform``: N slots spread evenly over the whole file (a time-lapse when the file is longer
  than a clip); chunk t's audio is the `samples_per_chunk` samples centred on the seconds its
  frames span.

For the consecutive strategies chunk t's audio covers exactly the seconds of its video chunk.
A file shorter than a clip holds its last frame (what a player shows) and its audio is zero
past the file's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STRATEGIES = ("uniform", "random", "center", "dense")


@dataclass(frozen=True)
class ClipPlan:
    """Slot indices of the N frames and the first audio sample of each of the T chunks."""

    slots: np.ndarray  # int64 N, into the decoded grid
    audio_starts: np.ndarray  # int64 T, into the decoded audio


def plan_clips(
    num_slots: int,
    num_frames: int,
    frames_per_chunk: int,
    samples_per_slot: float,
    strategy: str,
    rng: np.random.Generator | None = None,
    num_clips: int = 1,
) -> list[ClipPlan]:
    """The clips `strategy` takes from a grid of `num_slots` slots (one, except for dense)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if num_frames % frames_per_chunk:
        raise ValueError(
            f"num_frames {num_frames} is not a multiple of frames_per_chunk {frames_per_chunk}"
        )
    spare = max(num_slots - num_frames, 0)
    if strategy == "uniform":
        return [_spread(num_slots, num_frames, frames_per_chunk, samples_per_slot)]
    if strategy == "center":
        starts = [spare // 2]
    elif strategy == "random":
        if rng is None:
            raise ValueError("the random strategy needs an rng")
        starts = [int(rng.integers(0, spare + 1))]
    else:
        if num_clips < 1:
            raise ValueError(f"dense sampling needs num_clips >= 1, got {num_clips}")
        starts = (
            np.linspace(0, spare, num_clips).round().astype(int).tolist()
            if num_clips > 1
            else [spare // 2]
        )
    return [
        _window(start, num_slots, num_frames, frames_per_chunk, samples_per_slot) for start in starts
    ]


def _window(
    start: int, num_slots: int, num_frames: int, frames_per_chunk: int, samples_per_slot: float
) -> ClipPlan:
    """N consecutive slots from `start`, the last slot held past the grid's end."""
    slots = np.minimum(np.arange(start, start + num_frames), num_slots - 1)
    first = round(start * samples_per_slot)
    per_chunk = round(frames_per_chunk * samples_per_slot)
    audio_starts = first + per_chunk * np.arange(num_frames // frames_per_chunk)
    return ClipPlan(slots=slots.astype(np.int64), audio_starts=audio_starts.astype(np.int64))


def _spread(num_slots: int, num_frames: int, frames_per_chunk: int, samples_per_slot: float) -> ClipPlan:
    """N slots evenly over the grid; each chunk's audio centred on the span of its slots."""
    slots = np.floor((np.arange(num_frames) + 0.5) * num_slots / num_frames).astype(np.int64)
    per_chunk = round(frames_per_chunk * samples_per_slot)
    first, last = slots[::frames_per_chunk], slots[frames_per_chunk - 1 :: frames_per_chunk]
    centres = (first + last + 1) / 2 * samples_per_slot
    total = round(num_slots * samples_per_slot)
    audio_starts = np.clip(np.round(centres - per_chunk / 2), 0, max(total - per_chunk, 0))
    return ClipPlan(slots=slots, audio_starts=audio_starts.astype(np.int64))


def cut_audio(audio: np.ndarray, plan: ClipPlan, samples_per_chunk: int) -> np.ndarray:
    """The plan's chunks of `audio`, concatenated; zeros where a chunk runs past the end."""
    out = np.zeros(len(plan.audio_starts) * samples_per_chunk, dtype=np.float32)
    for t, start in enumerate(plan.audio_starts):
        piece = audio[start : start + samples_per_chunk]
        out[t * samples_per_chunk : t * samples_per_chunk + len(piece)] = piece
    return out


def average_clip_predictions(
    logits: torch.Tensor, video_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the per-clip `logits` (``clips x classes``) per video: (unique ids, ``videos x classes``)."""
    ids, inverse = torch.unique(video_ids, return_inverse=True)
    sums = torch.zeros(len(ids), logits.shape[-1], dtype=logits.dtype).index_add_(0, inverse, logits)
    counts = torch.bincount(inverse, minlength=len(ids)).to(logits.dtype).unsqueeze(-1)
    return ids, sums / counts
