"""How Mirasol's training-step cost grows with the number of frames, against the joint variant.

Mirasol splits a clip into chunks of a fixed number of frames and fuses each chunk into a few
latents, so its cost should grow linearly with the chunk count; the joint variant runs one
transformer over every chunk's tokens, whose attention grows with the square.

Each (variant, frames) point runs in a fresh subprocess on the CPU: the step time is the
median over timed steps after a warm-up, and the memory is the process's peak RSS during the
steps minus its RSS before the first step (the step's activations and gradients), per clip.

    python benchmarks/chunk_scaling.py                 # tiny config, 32..512 frames
    python benchmarks/chunk_scaling.py --config small --frames 32 64 128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from fedmirasol.models import build_model, get_config, mirasol_loss
from fedmirasol.models.tokenizer import ByteTokenizer


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(config_name: str, fusion: str, frames: int, batch_size: int, steps: int, threads: int) -> dict:
    """Time `steps` training steps at `frames` frames and measure their extra peak memory."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_config(config_name, fusion=fusion, num_frames=frames)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    tokenizer = ByteTokenizer()
    batch = {
        "video": torch.randn(batch_size, frames, 3, config.image_size, config.image_size),
        "audio": 0.1 * torch.randn(batch_size, config.num_samples),
        "video_present": torch.ones(batch_size, dtype=torch.bool),
        "audio_present": torch.ones(batch_size, dtype=torch.bool),
        "label": torch.zeros(batch_size, dtype=torch.long),
        "text": torch.stack([tokenizer.encode("a red disc, high tones, in sync", config.max_text_len)] * batch_size),
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = mirasol_loss(model, batch)
        loss.backward()
        optimizer.step()

    before = rss_mib()
    step()  # warm-up (allocates gradients and the allocator's pools)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {
        "fusion": fusion,
        "frames": frames,
        "chunks": config.num_chunks,
        "seconds_per_clip": statistics.median(times) / batch_size,
        "peak_mib_per_clip": max(peak - before, 0.0) / batch_size,
    }


def run_point(args: argparse.Namespace, fusion: str, frames: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", "--config", args.config, "--fusion", fusion,
        "--frames", str(frames), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--threads", str(args.threads),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def ratio_table(results: list[dict], frames: list[int]) -> None:
    point = {(r["fusion"], r["frames"]): r for r in results}
    print(f"\n{'frames':>6} {'chunks':>6} | {'mirasol s/clip':>14} {'joint s/clip':>12} {'joint/mirasol':>13} "
          f"| {'mirasol MiB':>11} {'joint MiB':>9}")
    for n in frames:
        m, j = point[("chunked", n)], point[("joint", n)]
        print(f"{n:>6} {m['chunks']:>6} | {m['seconds_per_clip']:>14.4f} {j['seconds_per_clip']:>12.4f} "
              f"{j['seconds_per_clip'] / m['seconds_per_clip']:>13.2f} | {m['peak_mib_per_clip']:>11.1f} "
              f"{j['peak_mib_per_clip']:>9.1f}")
    low, high = (64, 512) if {64, 512} <= set(frames) else (frames[0], frames[-1])
    factor = high / low
    print(f"\ngrowth from {low} to {high} frames ({factor:g}x the frames; linear = {factor:g}x):")
    for fusion in ("chunked", "joint"):
        a, b = point[(fusion, low)], point[(fusion, high)]
        time_growth = b["seconds_per_clip"] / a["seconds_per_clip"]
        memory_growth = b["peak_mib_per_clip"] / max(a["peak_mib_per_clip"], 1e-9)
        print(f"  {('mirasol' if fusion == 'chunked' else 'joint'):<8} time x{time_growth:.2f} "
              f"(/{factor:g} = {time_growth / factor:.2f})   memory x{memory_growth:.2f} "
              f"(/{factor:g} = {memory_growth / factor:.2f})")
    m, j = point[("chunked", high)], point[("joint", high)]
    print(f"at {high} frames: mirasol is {j['seconds_per_clip'] / m['seconds_per_clip']:.2f}x faster "
          f"and uses {j['peak_mib_per_clip'] / max(m['peak_mib_per_clip'], 1e-9):.2f}x less memory than joint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fusion", choices=("chunked", "joint"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the raw points as JSON")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.config, args.fusion, args.frames[0], args.batch_size, args.steps, args.threads)))
        return
    print(f"chunk scaling: config {args.config}, batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.threads} threads, {torch.__version__} on CPU")
    results = []
    for frames in args.frames:  # the two variants side by side at every point
        for fusion in ("chunked", "joint"):
            results.append(run_point(args, fusion, frames))
            r = results[-1]
            print(f"  {fusion:<8} {frames:>4} frames: {r['seconds_per_clip']:.4f} s/clip, "
                  f"{r['peak_mib_per_clip']:.1f} MiB/clip", flush=True)
    ratio_table(results, args.frames)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
