"""Short-to-long transfer on the late-tone questions: train tiny Mirasol on short clips (or a
length curriculum of ever longer ones), answer on long ones.

    python benchmarks/long_clip_transfer.py --threads 1 [--frames 32] [--eval-frames 256]
    python benchmarks/long_clip_transfer.py --threads 1 --frames 32,64,128,256 \
        --epochs 24,4,3,2 --train-clips 400,400,200,200

Mirasol's parameters do not depend on the number of frames (more frames are more chunks for the
same weights), so the same weights train on 32-frame clips (8 chunks), then on each further
stage's length (`fedmirasol.training.curriculum`, a fresh one-cycle schedule per stage), and are
evaluated after every stage on the validation clips of `--eval-frames` (64 chunks at 256):
exact match of the generated answers per question type ("what pitch is the first / last
tone?", `--late-tone` clips), next to each type's chance (its most frequent answer's share),
the number of questions and the standard error of chance. Trained directly on 256-frame clips
the plain recipe stays at the majority answer (benchmarks/README.md, video QA).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter, defaultdict

import torch
from torch.utils.data import DataLoader

from fedmirasol.data.batch import collate
from fedmirasol.models import build_model, get_config
from fedmirasol.training.centralized import TrainSettings, VideoQASettings, synthetic_split
from fedmirasol.training.curriculum import Stage, parse_stages, train_curriculum
from fedmirasol.training.loop import evaluate


def chance(dataset) -> dict[str, dict[str, float]]:  # noqa: ANN001 (SyntheticVideoQA)
    """Per question type: the share of its most frequent answer, the number of questions and
    the standard error of that share, sqrt(p (1 - p) / n)."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for index in range(len(dataset)):
        kind, _, answer = dataset.question(index)
        answers[kind][answer] += 1
    rates = {}
    for kind, counts in answers.items():
        total = sum(counts.values())
        share = max(counts.values()) / total
        rates[kind] = {"chance": round(share, 3), "n": total,
                       "se": round(math.sqrt(share * (1 - share) / total), 3)}
    return rates


def exact_match(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in metrics.items()
            if key.startswith("em_") or key == "exact_match"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="32", help="stage lengths, e.g. 32,64,128,256")
    parser.add_argument("--epochs", default="12", help="epochs per stage (one value: all)")
    parser.add_argument("--train-clips", default="400", help="clips per stage (one value: all)")
    parser.add_argument("--eval-frames", type=int, nargs="+", default=[256])
    parser.add_argument("--questions", default="first,last")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--val-clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stages = parse_stages(args.frames, args.epochs, args.train_clips)
    settings = TrainSettings(batch_size=args.batch_size, val_clips=args.val_clips,
                             seed=args.seed, device="cpu")
    videoqa = VideoQASettings(questions=tuple(args.questions.split(",")), late_tone=True)
    config = get_config("tiny", num_frames=stages[0].frames, text_weight=1.0)
    model = build_model(config)
    validation = {frames: synthetic_split(config.replace(num_frames=frames), settings, videoqa)[1]
                  for frames in args.eval_frames}
    rates = {frames: chance(clips) for frames, clips in validation.items()}
    results: dict[str, object] = {"stages": [], "seed": args.seed}
    started = time.perf_counter()

    def report(stage: Stage, metrics: dict[str, float]) -> None:
        record: dict[str, object] = {"stage_frames": stage.frames, "epochs": stage.epochs,
                                     "clips": stage.clips, "train_loss": round(metrics["loss"], 3),
                                     "seconds": round(time.perf_counter() - started, 1)}
        for frames in sorted({stage.frames, *args.eval_frames}):
            clips = validation.get(frames) or synthetic_split(
                config.replace(num_frames=frames), settings, videoqa)[1]
            loader = DataLoader(clips, batch_size=2 * args.batch_size, collate_fn=collate)
            scores = exact_match(evaluate(model, loader))
            record[f"eval_{frames}"] = {"exact_match": scores,
                                        "chance": rates.get(frames) or chance(clips)}
        record["load_1min"] = round(os.getloadavg()[0], 2)
        results["stages"].append(record)
        print(json.dumps(record), flush=True)

    train_curriculum(model, config, settings, stages, videoqa, after_stage=report)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
