"""Centralized training on synthetic data: the reference every federated run is compared with."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models import MirasolConfig, build_model
from fedmirasol.training.checkpoint import save_checkpoint
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate, train_epochs

MODALITIES = ("video", "audio")


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
    model_config: MirasolConfig, settings: TrainSettings
) -> tuple[SyntheticAVDataset, SyntheticAVDataset]:
    """Disjoint train and validation clips (different seeds) in the model's geometry."""
    data_config = SyntheticConfig.for_model(model_config, public=settings.public)
    drop = {"drop_video": settings.drop_modality == "video", "drop_audio": settings.drop_modality == "audio"}
    train = SyntheticAVDataset(data_config, settings.train_clips, seed=2 * settings.seed + 1, **drop)
    val = SyntheticAVDataset(data_config, settings.val_clips, seed=2 * settings.seed + 2, **drop)
    return train, val


def train_centralized(
    model_config: MirasolConfig,
    settings: TrainSettings,
    out_dir: Path,
    progress: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train, evaluate after every epoch, write metrics.jsonl and checkpoints; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    train_set, val_set = synthetic_split(model_config, settings)
    train_loader = DataLoader(
        train_set, batch_size=settings.batch_size, shuffle=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    val_loader = DataLoader(val_set, batch_size=2 * settings.batch_size, collate_fn=collate)
    model = build_model(model_config).to(device)
    optimizer, scheduler = one_cycle_optimizer(model, settings, len(train_loader))
    (out_dir / "config.json").write_text(
        json.dumps({"model": model_config.to_dict(), "train": asdict(settings)}, indent=2)
    )
    started = time.perf_counter()
    best = {"accuracy": -1.0}
    with (out_dir / "metrics.jsonl").open("w") as metrics_file:
        for epoch in range(1, settings.epochs + 1):
            train_metrics = train_epochs(model, train_loader, optimizer, device=device, scheduler=scheduler)
            val_metrics = evaluate(model, val_loader, device=device)
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
                f"({record['seconds']:.0f} s)"
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
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
