"""The GPU path, checked in one go (under 5 minutes on one GPU): run it whenever a GPU machine
is available and put its table in README.md ("GPU check").

1. bf16 autocast training steps (AdamW, the Mirasol objective) of the `base` and `small`
   configs: seconds a step, throughput in clips/s, CUDA peak memory, and MFU: the FLOPs of
   one step counted by `torch.utils.flop_counter` (forward and backward, as dispatched)
   divided by the step time and the GPU's peak dense bf16 FLOP/s (`--peak-tflops`, else
   looked up from the GPU's name).
2. DP-SGD with expanded-weights per-sample gradients (`ew`, what training uses) against the
   plain step on the same batch, both in float32 as DP training runs (expanded weights do
   not run under bf16 autocast): step-time ratio and peak memory.
3. One federated round with 2 virtual clients training on the GPU (`client.device`), through
   `simulate()` (Flower's Ray engine; each client reserves a share of the GPU).

A stage that fails is reported in the table with its error and does not stop the others.
`--dry-run` runs the same code on the CPU with the `tiny` config, a batch of 2 and 2 steps
(CI runs it; its figures mean nothing).

    python benchmarks/gpu_check.py                 # on a GPU machine
    python benchmarks/gpu_check.py --dry-run       # on the CPU
    python benchmarks/gpu_check.py --configs base --batch-size 16 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator

import torch

# Peak dense bf16 tensor FLOP/s (no sparsity) from the vendors' data sheets, by name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}


def load_average() -> float:
    return os.getloadavg()[0]


def peak_tflops(device: torch.device, given: float) -> float | None:
    if given > 0:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` (the CPU too, for the dry run)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any]) -> Iterator[None]:
    """out["peak_mib"]: CUDA peak memory allocated inside the block (None on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    yield
    out["peak_mib"] = (None if device.type != "cuda" else
                       round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1))


def model_and_batch(name: str, batch_size: int, device: torch.device):
    from fedmirasol.data.batch import collate, to_device
    from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
    from fedmirasol.models import build_model, get_config

    torch.manual_seed(0)
    config = get_config(name)
    model = build_model(config).to(device)
    data = SyntheticAVDataset(SyntheticConfig.for_model(config), batch_size, seed=0)
    return model, to_device(collate([data[i] for i in range(batch_size)]), device)


def plain_step(model: torch.nn.Module, batch, device: torch.device,
               bf16: bool = True) -> Callable[[], None]:
    from fedmirasol.models.loss import mirasol_loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(device) if bf16 else contextlib.nullcontext():
            loss, _ = mirasol_loss(model, batch)
        loss.backward()
        optimizer.step()
    return step


def dp_step(model: torch.nn.Module, batch, device: torch.device,
            bf16: bool = False) -> Callable[[], None]:
    """One DP-SGD step as training takes it: ew per-sample losses, Opacus' DPOptimizer
    (`LeanDPOptimizer`, the same release in fewer passes), in
    float32 (DP training does not autocast: expanded weights' backward fails under bf16
    autocast, "expected m1 and m2 to have the same dtype")."""
    from fedmirasol.privacy.dp_optimizer import LeanDPOptimizer
    from fedmirasol.privacy.dp_training import per_sample_losses

    losses_of, _ = per_sample_losses(model, "ew")
    optimizer = LeanDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                noise_multiplier=1.0, max_grad_norm=1.0,
                                expected_batch_size=len(batch["label"]), loss_reduction="mean")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(device) if bf16 else contextlib.nullcontext():
            losses = losses_of(batch)
        losses.sum().backward()
        optimizer.step()
    return step


def counted_flops(model: torch.nn.Module, batch, device: torch.device) -> int:
    """FLOPs of one forward and backward pass (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedmirasol.models.loss import mirasol_loss

    counter = FlopCounterMode(display=False)
    with counter:
        with bf16_autocast(device):
            loss, _ = mirasol_loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Median seconds of `steps` steps after one warm-up step."""
    step()
    synchronize(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def check_training(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    model, batch = model_and_batch(name, args.batch_size, device)
    row: dict[str, Any] = {"config": name, "batch": args.batch_size,
                           "parameters_m": round(sum(p.numel() for p in model.parameters())
                                                 / 1e6, 2)}
    flops = counted_flops(model, batch, device)
    memory: dict[str, Any] = {}
    with peak_memory(device, memory):
        seconds = timed(plain_step(model, batch, device), args.steps, device)
    peak = peak_tflops(device, args.peak_tflops)
    row.update(step_s=round(seconds, 4), clips_per_s=round(args.batch_size / seconds, 2),
               peak_mib=memory["peak_mib"], gflop_per_step=round(flops / 1e9, 2),
               achieved_tflops=round(flops / seconds / 1e12, 3),
               mfu=None if peak is None else round(flops / seconds / (peak * 1e12), 4))
    return row


def check_dp(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """ew DP-SGD against the plain step, both in float32 as DP training runs."""
    model, batch = model_and_batch(name, args.batch_size, device)
    row: dict[str, Any] = {"config": name, "batch": args.batch_size, "dtype": "float32"}
    plain_memory: dict[str, Any] = {}
    with peak_memory(device, plain_memory):
        plain = timed(plain_step(copy.deepcopy(model), batch, device, bf16=False), args.steps,
                      device)
    dp_memory: dict[str, Any] = {}
    with peak_memory(device, dp_memory):
        dp = timed(dp_step(model, batch, device), args.steps, device)
    row.update(plain_step_s=round(plain, 4), ew_step_s=round(dp, 4),
               ew_over_plain=round(dp / plain, 2), plain_peak_mib=plain_memory["peak_mib"],
               ew_peak_mib=dp_memory["peak_mib"])
    return row


def check_round(args: argparse.Namespace, device: torch.device) -> dict:
    """One round of 2 virtual clients training on `device` through Flower's engine."""
    from fedmirasol.config import load_config
    from fedmirasol.engines.simulation import simulate
    from fedmirasol.runs import run_dir as rundir

    model = "tiny" if args.dry_run else "small"
    with tempfile.TemporaryDirectory() as runs:
        config = load_config(None, [
            "num-rounds=1", f"model.name='{model}'", "data.num-clients=2",
            "data.clips-per-client=8", "data.test-clips=4", "data.partitioner='iid'",
            "client.batch-size=4", "client.threads=1", f"client.device='{device.type}'",
            "strategy.min-train-nodes=2", "strategy.fraction-evaluate=0.0",
            "simulation.max-parallel-clients=2", "output.plots=false",
            f"output.runs-dir='{runs}'"])
        started = time.perf_counter()
        run = simulate(config, progress=None)
        seconds = time.perf_counter() - started
        (record,) = rundir.read_metrics(run)[1:]
    return {"model": model, "clients": len(record["participants"]),
            "train_loss": round(record["train_loss"], 4),
            "round_s": round(record["duration_s"], 2), "run_s": round(seconds, 1),
            "rejected": len(record["rejected"])}


def guarded(stage: str, function: Callable[[], dict]) -> dict:
    try:
        return {"stage": stage, "ok": True, **function()}
    except Exception as error:  # a failing stage is a finding, reported in the table
        traceback.print_exc()
        return {"stage": stage, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]}


def run_checks(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry-run on the CPU")
    torch.set_num_threads(args.threads)
    configs = ["tiny"] if args.dry_run else args.configs
    rows = [guarded(f"train {name}", lambda name=name: check_training(name, args, device))
            for name in configs]
    rows += [guarded(f"dp-sgd ew {name}", lambda name=name: check_dp(name, args, device))
             for name in configs]
    rows.append(guarded("federated round", lambda: check_round(args, device)))
    return rows


def describe(device: str) -> str:
    gpu = (torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available()
           else "no GPU")
    return (f"{platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def print_table(rows: list[dict]) -> None:
    for row in rows:
        fields = ", ".join(f"{key}={value}" for key, value in row.items()
                           if key not in ("stage", "ok"))
        print(f"| {row['stage']} | {'ok' if row['ok'] else 'FAILED'} | {fields} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same checks on the CPU with the tiny config (CI)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", nargs="+", default=["base", "small"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the GPU's peak dense bf16 TFLOP/s (default: from its name)")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()
    if args.dry_run:
        args.batch_size, args.steps = 2, 2
    before = load_average()
    rows = run_checks(args)
    print(f"\n{describe('cpu' if args.dry_run else args.device)}; load average (1 min) "
          f"before / after: {before:.1f} / {load_average():.1f}\n")
    print("| stage | result | figures |\n| --- | --- | --- |")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    if not all(row["ok"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
