"""`fedmirasol train`: centralized training on the built-in synthetic data."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedmirasol.cli import model_config_name
from fedmirasol.errors import ConfigError
from fedmirasol.models.config import MODALITY_NAMES

# TrainSettings' fields the flags set; a flag left out keeps TrainSettings' default (the
# defaults are not read here: that would import torch to build the parser).
SETTINGS_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate",
                  "train_clips": "train_clips", "val_clips": "val_clips", "seed": "seed"}


def register(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--task", choices=("classification", "videoqa"), default="classification",
                        help="classification (default) or videoqa: a question or 'caption:' per "
                        "clip, answered by the text decoder; reports exact match per question "
                        "type, CIDEr and BLEU-4")
    qa = parser.add_argument_group("videoqa (--task videoqa)")
    qa.add_argument("--questions", help="question types, comma-separated (default "
                    "caption,shape,pitch,sync,count,order; also first, last)")
    qa.add_argument("--late-tone", action="store_true",
                    help="every clip ends with an extra tone in its last quarter (ask 'last')")
    qa.add_argument("--num-beams", type=int, default=1,
                    help="evaluation decoding: 1 greedy (default), more: beam search")
    parser.add_argument("--frames", type=int, help="frames per clip (model num_frames; "
                        "a multiple of its frames per chunk)")
    parser.add_argument("--text-weight", type=float, help="weight of the text loss")
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
    parser.add_argument("--epochs", type=int, help="default 8")
    parser.add_argument("--batch-size", type=int, help="default 32")
    parser.add_argument("--lr", type=float, help="default 0.002 (AdamW, one-cycle schedule)")
    parser.add_argument("--train-clips", type=int, help="default 4000")
    parser.add_argument("--val-clips", type=int, help="default 500")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (bf16 autocast on GPUs)")
    parser.add_argument(
        "--threads", type=int,
        help="torch CPU threads (default: torch's choice; 1 is much faster on a loaded machine)",
    )
    parser.add_argument(
        "--drop-modality", choices=MODALITY_NAMES,
        help="remove one modality from training and validation (the ablation)",
    )
    parser.add_argument(
        "--public", action="store_true",
        help="train on the public variant of the task (the other shapes and pitches): a "
        "pre-trained model for federated fine-tuning (simulation key pretrained.checkpoint)",
    )
    pretrain = parser.add_argument_group(
        "pre-training objectives (instead of the labels; the run config's [pretrain] keys)")
    pretrain.add_argument("--objective", choices=("videomae", "contrastive"),
                          help="videomae: masked autoencoding with tube masking; contrastive: "
                          "video-text InfoNCE, zero-shot classification and retrieval")
    pretrain.add_argument("--mask-ratio", type=float, help="videomae: hidden share of the patch "
                          "grid (default 0.9)")
    pretrain.add_argument("--audio-mask-ratio", type=float,
                          help="videomae: also mask log-mel patches at this ratio (Mirasol)")
    pretrain.add_argument("--negatives", choices=("in-batch", "public"),
                          help="contrastive: in-batch (default) or fixed public negatives")
    parser.add_argument("--out", type=Path, help="output directory (default: runs/train-<config>-<time>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from fedmirasol.models import get_config
    from fedmirasol.models.summary import describe
    from fedmirasol.training.centralized import TrainSettings, train_centralized
    from fedmirasol.training.device import resolve_device

    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as error:  # torch.device() of a bad name: RuntimeError
        raise ConfigError(f"--device {args.device}: {error}") from error
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    options = ("combiner", "fusion", "alpha", "alpha_modality", "learn_alpha", "freeze_encoders")
    overrides = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
    if args.frames is not None:
        overrides["num_frames"] = args.frames
    if args.text_weight is not None:
        overrides["text_weight"] = args.text_weight
    try:
        model_config = get_config(model_config_name(args.config, "--config"), **overrides)
    except ValueError as error:  # the config's own checks of the flags above
        raise ConfigError(f"--config {args.config}: {error}") from error
    chosen = {field: getattr(args, flag) for flag, field in SETTINGS_FLAGS.items()
              if getattr(args, flag) is not None}
    for flag in ("epochs", "batch_size", "train_clips", "val_clips"):
        if flag in chosen and chosen[flag] < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {chosen[flag]}")
    settings = TrainSettings(device=args.device, drop_modality=args.drop_modality,
                             public=args.public, **chosen)
    videoqa = _videoqa_settings(args, model_config)
    pretrain = _pretrain_section(args)
    if videoqa and pretrain.enabled:
        raise ConfigError("--objective trains a pre-training objective instead of the task: it "
                          "does not combine with --task videoqa")
    suffix = f"-no-{args.drop_modality}" if args.drop_modality else ""
    suffix += "-public" if args.public else ""
    suffix += "-videoqa" if videoqa else ""
    suffix += f"-{args.objective}" if args.objective else ""
    out = args.out or Path("runs") / f"train-{args.config}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {model_config.name} ({describe(model_config)}) -> {out}")
    summary = train_centralized(model_config, settings, out, videoqa=videoqa, pretrain=pretrain)
    print(json.dumps(summary, indent=2))
    print(f"run directory: {out}")
    return 0


def _videoqa_settings(args: argparse.Namespace, model_config) -> object | None:  # noqa: ANN001
    """The videoqa flags as VideoQASettings (None for classification), checked."""
    from fedmirasol.data.questions import DEFAULT_TYPES, parse_question_types
    from fedmirasol.training.centralized import VideoQASettings

    if args.task != "videoqa":
        if args.questions or args.late_tone:
            raise ConfigError("--questions and --late-tone need --task videoqa")
        return None
    if model_config.text_weight <= 0:
        raise ConfigError(f"--task videoqa trains the text decoder: {model_config.name} has "
                          "text_weight 0; pass --text-weight 1")
    if args.num_beams < 1:
        raise ConfigError(f"--num-beams must be at least 1, got {args.num_beams}")
    try:
        questions = parse_question_types(args.questions) if args.questions else DEFAULT_TYPES
    except ValueError as error:
        raise ConfigError(f"--questions: {error}") from error
    return VideoQASettings(questions=questions, late_tone=args.late_tone,
                           num_beams=args.num_beams)


# The [pretrain] keys the objective flags set.
PRETRAIN_FLAGS = {"mask_ratio": "mask-ratio", "audio_mask_ratio": "audio-mask-ratio",
                  "negatives": "negatives"}


def _pretrain_section(args: argparse.Namespace):  # noqa: ANN202 - PretrainConfig (torch-free)
    """The objective flags as the run config's [pretrain] section (its checks name the key)."""
    from fedmirasol.config.base import config_error
    from fedmirasol.config.pretrain import PretrainConfig
    from pydantic import ValidationError

    values = {key: getattr(args, field) for field, key in PRETRAIN_FLAGS.items()
              if getattr(args, field) is not None}
    if values and not args.objective:
        flags = ", ".join(f"--{key}" for key in values)
        raise ConfigError(f"{flags} need --objective")
    try:
        return PretrainConfig.model_validate({"objective": args.objective or "none", **values})
    except ValidationError as error:
        raise config_error(error, "pretrain.") from error
