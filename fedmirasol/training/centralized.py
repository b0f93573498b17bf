"""Centralized training on synthetic data: the reference every federated run is compared with."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from fedmirasol.config.pretrain import PretrainConfig
from fedmirasol.data.batch import collate
from fedmirasol.data.questions import DEFAULT_TYPES
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.data.videoqa import SyntheticVideoQA
from fedmirasol.models import MirasolConfig, build_model
from fedmirasol.training.checkpoint import save_checkpoint
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate, train_epochs
from fedmirasol.training.text_eval import count_key
from fedmirasol.training.pretraining import attach_pretraining, synthetic_prompts

MODALITIES = ("video", "audio")
# The pre-training objectives' figures shown in each epoch's progress line.
SHOWN_METRICS = ("mae_video", "mae_audio", "v2t_r1", "t2v_r1")


@dataclass(frozen=True)
class TrainSettings:
    """What a centralized run does beyond the model config."""

    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    train_clips: int = 4000
    val_clips: int = 500
    seed: int = 0
    device: str = "auto"
    drop_modality: str | None = None  # "video" or "audio": remove it from train and val
    public: bool = False  # train on the public variant (other shapes and pitches): pre-training

    def __post_init__(self) -> None:
        if self.drop_modality not in (None, *MODALITIES):
            raise ValueError(f"drop_modality must be one of {MODALITIES}, got {self.drop_modality!r}")


@dataclass(frozen=True)
class VideoQASettings:
    """The videoqa task instead of classification: a question (or "caption:") per clip, the
    answers generated (`fedmirasol.data.videoqa`)."""

    questions: tuple[str, ...] = DEFAULT_TYPES
    late_tone: bool = False
    num_beams: int = 1  # evaluation decoding: 1 greedy, more: beam search


def one_cycle_optimizer(
    model: torch.nn.Module, settings: TrainSettings, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The centralized recipe: AdamW with a one-cycle schedule over all of `settings.epochs`."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    return optimizer, scheduler


def synthetic_split(
    model_config: MirasolConfig, settings: TrainSettings, videoqa: VideoQASettings | None = None
) -> tuple[Dataset, Dataset]:
    """Disjoint train and validation clips (different seeds) in the model's geometry: labelled
    clips, or (`videoqa`) one question per clip."""
    data_config = SyntheticConfig.for_model(model_config, public=settings.public)
    drop = {"drop_video": settings.drop_modality == "video", "drop_audio": settings.drop_modality == "audio"}

    def clips(count: int, seed: int) -> Dataset:
        if videoqa is None:
            return SyntheticAVDataset(data_config, count, seed=seed, **drop)
        return SyntheticVideoQA(data_config, count, seed=seed, question_types=videoqa.questions,
                                late_tone=videoqa.late_tone, **drop)

    return clips(settings.train_clips, 2 * settings.seed + 1), clips(settings.val_clips, 2 * settings.seed + 2)


def train_centralized(
    model_config: MirasolConfig,
    settings: TrainSettings,
    out_dir: Path,
    progress: Callable[[str], None] = print,
    videoqa: VideoQASettings | None = None,
    pretrain: PretrainConfig | None = None,
) -> dict[str, float]:
    """Train, evaluate after every epoch, write metrics.jsonl and checkpoints; return the summary.

    With `videoqa` the clips come with questions; "accuracy" is then the QA exact match and
    the summary adds the final scores of the generated text (`final_val_text`). With a
    `pretrain` objective the model trains on it instead of the labels, "accuracy" is the
    objective's (`fedmirasol.training.pretrain_eval`), and the checkpoints keep the objective's
    parts (a fine-tuning run drops them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    train_set, val_set = synthetic_split(model_config, settings, videoqa)
    generation = {"num_beams": videoqa.num_beams} if videoqa else None
    train_loader = DataLoader(
        train_set, batch_size=settings.batch_size, shuffle=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    val_loader = DataLoader(val_set, batch_size=2 * settings.batch_size, collate_fn=collate)
    model = build_model(model_config)
    pretrain = pretrain or PretrainConfig()
    attach_pretraining(model, pretrain, synthetic_prompts(model_config))
    model.to(device)
    optimizer, scheduler = one_cycle_optimizer(model, settings, len(train_loader))
    (out_dir / "config.json").write_text(
        json.dumps({"model": model_config.to_dict(), "train": asdict(settings),
                    "pretrain": pretrain.table(),
                    **({"videoqa": asdict(videoqa)} if videoqa else {})}, indent=2)
    )
    started = time.perf_counter()
    best = {"accuracy": -1.0}
    with (out_dir / "metrics.jsonl").open("w") as metrics_file:
        for epoch in range(1, settings.epochs + 1):
            train_metrics = train_epochs(model, train_loader, optimizer, device=device, scheduler=scheduler)
            val_metrics = evaluate(model, val_loader, device=device, generation=generation)
            record = {
                "epoch": epoch,
                "seconds": round(time.perf_counter() - started, 2),
                "train": train_metrics,
                "val": val_metrics,
            }
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            progress(
                f"epoch {epoch}/{settings.epochs}  train loss {train_metrics['loss']:.3f}  "
                f"val loss {val_metrics['loss']:.3f}  val accuracy {val_metrics['accuracy']:.3f}  "
                + "".join(f"{key} {val_metrics[key]:.3f}  " for key in sorted(val_metrics)
                          if key.startswith("em_") or key in ("cider", "bleu4"))
                + "".join(f"{key} {val_metrics[key]:.3f}  " for key in SHOWN_METRICS
                          if key in val_metrics)
                + f"({record['seconds']:.0f} s)"
            )
            if val_metrics["accuracy"] > best["accuracy"]:
                best = dict(val_metrics, epoch=epoch)
                save_checkpoint(out_dir / "best.pt", model, model_config, extra={"epoch": epoch})
    save_checkpoint(out_dir / "final.pt", model, model_config, extra={"epoch": settings.epochs})
    summary = {
        "final_val_accuracy": val_metrics["accuracy"],
        "best_val_accuracy": best["accuracy"],
        "best_epoch": best["epoch"],
        "seconds": round(time.perf_counter() - started, 2),
        "drop_modality": settings.drop_modality,
        "public": settings.public,
    }
    if videoqa is not None:
        summary["task"] = "videoqa"
        summary["final_val_text"] = {key: value for key, value in val_metrics.items()
                                     if count_key(key)}
    if pretrain.enabled:
        summary["objective"] = pretrain.objective
        summary["final_val_metrics"] = val_metrics
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
