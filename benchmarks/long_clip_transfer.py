"""Short-to-long transfer on the late-tone questions: train tiny Mirasol on short clips, answer
on long ones.

    python benchmarks/long_clip_transfer.py --threads 1 [--train-frames 32] [--eval-frames 256]

Mirasol's parameters do not depend on the number of frames (more frames are more chunks for the
same weights), so a model trained centrally on 32-frame clips (8 chunks) is evaluated, unchanged,
on the validation clips of `--eval-frames` (64 chunks at 256): exact match of the generated
answers per question type ("what pitch is the first / last tone?", `--late-tone` clips), next to
each type's chance (its most frequent answer's share). Trained directly on 256-frame clips the
same recipe stays at the majority answer (benchmarks/README.md, video QA).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict

import torch
from torch.utils.data import DataLoader

from fedmirasol.data.batch import collate
from fedmirasol.models import build_model, get_config
from fedmirasol.training.centralized import (
    TrainSettings, VideoQASettings, one_cycle_optimizer, synthetic_split,
)
from fedmirasol.training.loop import evaluate, train_epochs


def chance(dataset) -> dict[str, float]:  # noqa: ANN001 (SyntheticVideoQA)
    """Per question type, the share of its most frequent answer."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for index in range(len(dataset)):
        kind, _, answer = dataset.question(index)
        answers[kind][answer] += 1
    return {kind: round(max(c.values()) / sum(c.values()), 3) for kind, c in answers.items()}


def exact_match(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in metrics.items()
            if key.startswith("em_") or key == "exact_match"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-frames", type=int, default=32)
    parser.add_argument("--eval-frames", type=int, nargs="+", default=[256])
    parser.add_argument("--questions", default="first,last")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument("--val-clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                             train_clips=args.train_clips, val_clips=args.val_clips,
                             seed=args.seed, device="cpu")
    videoqa = VideoQASettings(questions=tuple(args.questions.split(",")), late_tone=True)
    short = get_config("tiny", num_frames=args.train_frames, text_weight=1.0)
    train_set, val_set = synthetic_split(short, settings, videoqa)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              collate_fn=collate,
                              generator=torch.Generator().manual_seed(args.seed))
    model = build_model(short)
    optimizer, scheduler = one_cycle_optimizer(model, settings, len(train_loader))
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_epochs(model, train_loader, optimizer, scheduler=scheduler)
    trained = time.perf_counter() - started
    results = {"train_frames": args.train_frames, "train_seconds": round(trained, 1)}
    for frames in [args.train_frames, *args.eval_frames]:
        config = short.replace(num_frames=frames)
        _, clips = synthetic_split(config, settings, videoqa)
        loader = DataLoader(clips, batch_size=2 * args.batch_size, collate_fn=collate)
        started = time.perf_counter()
        scores = exact_match(evaluate(model, loader))
        results[f"{frames}_frames"] = {"exact_match": scores, "chance": chance(clips),
                                       "eval_seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps({frames: results[f"{frames}_frames"]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
