"""A length curriculum: train the same weights on ever longer clips (e.g. 32, 64, 128, 256
frames). Mirasol's parameters do not depend on the number of frames, so each stage only swaps
the data: clips of the stage's length, a fresh one-cycle schedule over the stage's epochs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch.utils.data import DataLoader

from fedmirasol.data.batch import collate
from fedmirasol.models import MirasolConfig
from fedmirasol.training.centralized import (
    TrainSettings, VideoQASettings, one_cycle_optimizer, synthetic_split,
)
from fedmirasol.training.loop import train_epochs


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: `epochs` over `clips` training clips of `frames` frames."""

    frames: int
    epochs: int
    clips: int

    def __post_init__(self) -> None:
        if self.frames <= 0 or self.epochs <= 0 or self.clips <= 0:
            raise ValueError(f"a curriculum stage needs positive frames, epochs and clips: {self}")


def parse_stages(frames: str, epochs: str, clips: str) -> tuple[Stage, ...]:
    """Stages from comma lists ("32,64,256", "24,4,2", "400,400,200"); a single epochs or clips
    value applies to every stage."""
    lengths = [int(value) for value in frames.split(",")]
    per_stage = []
    for name, text in (("epochs", epochs), ("clips", clips)):
        values = [int(value) for value in text.split(",")]
        if len(values) not in (1, len(lengths)):
            raise ValueError(f"{name} lists {len(values)} values for {len(lengths)} stages")
        per_stage.append(values * len(lengths) if len(values) == 1 else values)
    return tuple(Stage(f, e, c) for f, e, c in zip(lengths, *per_stage))


def train_curriculum(
    model: torch.nn.Module,
    model_config: MirasolConfig,
    settings: TrainSettings,
    stages: tuple[Stage, ...],
    videoqa: VideoQASettings | None = None,
    after_stage: Callable[[Stage, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` through `stages` in order, each on fresh synthetic clips of its length
    (the same seeds as `synthetic_split`, so a stage's clips are the plain run's clips at that
    length); return each stage's last training metrics. `after_stage(stage, metrics)` runs after
    each stage (e.g. an evaluation)."""
    if not stages:
        raise ValueError("a curriculum needs at least one stage")
    results = []
    for stage in stages:
        stage_settings = replace(settings, epochs=stage.epochs, train_clips=stage.clips)
        train_set, _ = synthetic_split(model_config.replace(num_frames=stage.frames),
                                       stage_settings, videoqa)
        loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True,
                            collate_fn=collate,
                            generator=torch.Generator().manual_seed(settings.seed))
        optimizer, scheduler = one_cycle_optimizer(model, stage_settings, len(loader))
        metrics = train_epochs(model, loader, optimizer, epochs=stage.epochs, scheduler=scheduler)
        metrics = dict(metrics, frames=stage.frames)
        results.append(metrics)
        if after_stage is not None:
            after_stage(stage, metrics)
    return results
