"""`fedmirasol train`: centralized training on the built-in synthetic data."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedmirasol.models import get_config
from fedmirasol.models.config import MODALITY_NAMES
from fedmirasol.models.summary import describe
from fedmirasol.training.centralized import MODALITIES, TrainSettings, train_centralized


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainSettings()
    parser = subparsers.add_parser(
        "train",
        help="train centrally on synthetic data (the reference for federated runs)",
        description="Train a model (Mirasol, or the late-fusion baseline) centrally on the built-in "
        "synthetic audio-visual task; "
        "writes config.json, metrics.jsonl, best.pt, final.pt and summary.json.",
    )
    parser.add_argument(
        "--config", "--model", dest="config", default="tiny",
        help="model config name, e.g. tiny or latefusion-tiny (default: tiny)",
    )
    parser.add_argument("--combiner", choices=("transformer", "ttm"), help="override the combiner")
    parser.add_argument("--fusion", choices=("chunked", "joint"), help="override the fusion")
    late = parser.add_argument_group("late-fusion models (latefusion-*)")
    late.add_argument("--alpha", type=float, help="modality weight (initial value with --learn-alpha)")
    late.add_argument("--alpha-modality", choices=MODALITY_NAMES, help="the modality alpha scales")
    late.add_argument("--learn-alpha", action="store_true", default=None, help="learn alpha")
    late.add_argument(
        "--freeze-encoders", action="store_true", default=None,
        help="train only the fusion head (TimeSformer and AST frozen)",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--train-clips", type=int, default=defaults.train_clips)
    parser.add_argument("--val-clips", type=int, default=defaults.val_clips)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (bf16 autocast on GPUs)")
    parser.add_argument(
        "--threads", type=int,
        help="torch CPU threads (default: torch's choice; 1 is much faster on a loaded machine)",
    )
    parser.add_argument(
        "--drop-modality", choices=MODALITIES,
        help="remove one modality from training and validation (the ablation)",
    )
    parser.add_argument(
        "--public", action="store_true",
        help="train on the public variant of the task (the other shapes and pitches): a "
        "pre-trained model for federated fine-tuning (simulation key pretrained.checkpoint)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: runs/train-<config>-<time>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    options = ("combiner", "fusion", "alpha", "alpha_modality", "learn_alpha", "freeze_encoders")
    overrides = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
    model_config = get_config(args.config, **overrides)
    settings = TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        train_clips=args.train_clips, val_clips=args.val_clips, seed=args.seed,
        device=args.device, drop_modality=args.drop_modality, public=args.public,
    )
    suffix = f"-no-{args.drop_modality}" if args.drop_modality else ""
    suffix += "-public" if args.public else ""
    out = args.out or Path("runs") / f"train-{args.config}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {model_config.name} ({describe(model_config)}) -> {out}")
    summary = train_centralized(model_config, settings, out)
    print(json.dumps(summary, indent=2))
    print(f"run directory: {out}")
    return 0
