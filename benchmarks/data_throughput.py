"""Media data path throughput against training throughput, on this machine, in one run.

Measures clips per second that `MediaClipDataset` delivers (PyAV decode + resample + resize +
normalize + collate, through DataLoader workers) with an empty decode cache (cold) and with a
filled one (cached), for two sources:

- ``synth``: `fedmirasol data synth` clips, already in the model's geometry (64 px, 8 fps);
- ``camera``: camera-like files, 320x240 at 29.97 fps with 44.1 kHz stereo audio, which must be
  resampled in time and space.

and the clips per second the `small` model trains on (forward + backward + AdamW step of the
project's loss on pre-collated batches, so no data cost). The target: cached data >= 2x training.

    /work/venv/bin/python benchmarks/data_throughput.py [--clips 48] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedmirasol.data.batch import collate
from fedmirasol.data.media.cache import DecodeCache
from fedmirasol.data.media.dataset import MediaClipDataset, media_loader
from fedmirasol.data.media.manifest import ClipRecord, read_manifest
from fedmirasol.data.media.synth import write_synthetic_media
from fedmirasol.data.media.writer import write_media_file
from fedmirasol.models import build_model, get_config
from fedmirasol.training.loop import train_epochs


def camera_clips(out: Path, count: int, seconds: float = 3.0) -> list[ClipRecord]:
    """Moving-noise 320x240 h264 at 29.97 fps with 44.1 kHz stereo aac."""
    rng = np.random.default_rng(0)
    frames_per_clip = round(seconds * 30000 / 1001)
    base = rng.integers(0, 255, (240 + frames_per_clip, 320, 3), dtype=np.uint8)
    records = []
    for index in range(count):
        frames = np.stack(
            [np.roll(base[i : i + 240], index * 7, axis=1) for i in range(frames_per_clip)]
        )
        audio = (0.3 * rng.standard_normal((2, round(seconds * 44_100)))).astype(np.float32)
        path = write_media_file(out / f"camera_{index:03d}.mp4", frames, 29.97, audio, 44_100, crf=23)
        records.append(ClipRecord(path=str(path), label=index % 8))
    return records


def epoch_rates(
    records: list[ClipRecord], config, cache_dir: Path, workers: int, batch_size: int, epochs: int
) -> list[float]:
    """Clips per second of each pass over the records, through one loader (persistent workers)."""
    dataset = MediaClipDataset(
        records, config, strategy="random", random_crop=True, cache=DecodeCache(cache_dir)
    )
    loader = media_loader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(len(batch["label"]) for batch in loader)
        rates.append(count / (time.perf_counter() - start))
    if dataset.skipped_count():
        raise RuntimeError(f"benchmark files failed to decode: {dataset.skipped_files()}")
    return rates


def train_rate(config, batches: list[dict], steps: int) -> float:
    """Clips per second the model trains on (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_epochs(model, batches[:1], optimizer)  # warm-up
    start = time.perf_counter()
    metrics = train_epochs(model, (batches * steps)[:steps], optimizer)
    return metrics["num_examples"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3, help="cached passes (the median is reported)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    config = get_config(args.config)
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"model {config.name}: {config.num_frames} frames at {config.fps:g} fps, {config.image_size} px; "
        f"load average {os.getloadavg()[0]:.1f} (other processes slow both sides)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {
            "synth": read_manifest(write_synthetic_media(tmp / "synth", args.clips, config)),
            "camera": camera_clips(tmp / "camera", args.clips),
        }
        rows = []
        for name, records in sources.items():
            cache = tmp / f"cache_{name}"
            cold, *cached = epoch_rates(
                records, config, cache, args.workers, args.batch_size, 1 + args.epochs
            )
            inline = epoch_rates(records, config, cache, 0, args.batch_size, args.epochs)
            rows.append((name, cold, float(np.median(cached)), float(np.median(inline))))
        sample_batches = [
            collate(
                [MediaClipDataset(sources["synth"], config)[i] for i in range(b, b + args.batch_size)]
            )
            for b in range(0, 2 * args.batch_size, args.batch_size)
        ]
        trained = train_rate(config, sample_batches, args.train_steps)
    print(f"\ntraining ({config.name} model, batch {args.batch_size}): {trained:.1f} clips/s\n")
    print(
        f"{'source':8} {'cold':>12} {'cached':>12} {'cached, 0 wk':>14} {'cached/train':>13} {'cold/train':>11}"
    )
    for name, cold, cached, inline in rows:
        print(
            f"{name:8} {cold:9.1f}/s  {cached:9.1f}/s  {inline:11.1f}/s  {cached / trained:12.1f}x {cold / trained:10.1f}x"
        )
    print(
        f"\n(cold: first pass, empty cache; cached: median of {args.epochs} later passes; both with "
        f"{args.workers} DataLoader workers; '0 wk': cached, decoded in the main process. "
        "Target: cached >= 2x training)"
    )


if __name__ == "__main__":
    main()
