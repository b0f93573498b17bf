"""DP-SGD against plain SGD on the same batches: step time and peak memory, as ratios.

For each model config and batch size, every mode trains a copy of the same model on one fixed
batch of synthetic clips with full optimizer steps on the CPU:

- ``plain``: the per-sample objective averaged, backward, SGD step;
- Opacus DP-SGD (per-sample gradients, per-sample clipping, Gaussian noise, step), with the
  per-sample gradients from ``bk`` (book-keeping: PyTorch's expanded weights over the whole
  objective, Linear weights kept as inputs and output gradients with ghost norms where that is
  cheaper: fedmirasol.privacy.book_keeping, what training uses by default), ``ew`` (the same
  with every per-sample gradient formed: fedmirasol.privacy.expanded_weights), ``hooks``
  (Opacus' GradSampleModule) or ``functorch``; or ``ghost``: ghost clipping (per-sample norms without
  per-sample gradients, two backward passes), through fedmirasol.privacy.ghost_clipping,
  which makes Opacus 1.6's ghost clipping run on Mirasol (see there for why it fails as is);
- ``bk-secure`` / ``ew-secure``: ``bk`` / ``ew`` with the noise training draws: a CSPRNG (AES counter mode), four
  float64 Gaussians summed per coordinate and added to the float64 sum of the clipped
  gradients (fedmirasol.privacy.dp_training.SecureDPOptimizer); the difference to ``ew`` is
  the cost of secure noise. (``bk``, ``ew``, ... draw torch's float32 noise, Opacus' default,
  from a generator of their own, as training's seeded path does.)
- ``bk-inline``: ``bk`` with each step's noise drawn inside the step, not ahead on a worker
  thread during the previous step's forward and backward (fedmirasol.privacy.noise_ahead).

Time: one subprocess holds a copy of the model per mode and interleaves their steps, a block
of ``--block`` consecutive steps of every mode per round (the order rotating), so the load of a
shared machine falls on all modes alike; the median step (block / ``--block``) of each mode
over the rounds, after a warm-up step, divided by plain's, both in wall-clock time (``time x``)
and in the process's CPU time (``cpu x``: all its threads, so the noise drawn ahead counts;
with one torch thread, the step's own work, without the waits for a core that a loaded
machine adds), and in the main thread's CPU time (``path x``: the step's critical path, what
its wall time is where a second core is free for the noise drawn ahead; the same as ``cpu x``
for modes without a worker). A block ends when the noise drawn ahead for the next step is
ready, so it holds exactly one draw per step, and none spills into another mode's block. Memory: a fresh subprocess per mode, its peak RSS during the steps minus its RSS
before the first step (activations, gradients, per-sample gradients), as chunk_scaling.py
measures it. Ghost clipping's per-sample norms are also checked against the exact ones.

Measured figures (machine, load, batch sizes, threads) are in README.md, "Differential
privacy".

    python benchmarks/dp_overhead.py                              # tiny and small, batch 8 and 32
    python benchmarks/dp_overhead.py --configs tiny --batch-sizes 4 --steps 3
    python benchmarks/dp_overhead.py --modes plain ew --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("plain", "bk", "bk-inline", "bk-secure", "ew", "ew-secure", "hooks", "functorch",
         "ghost")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[0]


def _setup(config_name: str, batch_size: int, threads: int):
    import torch

    from fedmirasol.data.batch import collate
    from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
    from fedmirasol.models import build_model, get_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_config(config_name)
    model = build_model(config)
    data = SyntheticAVDataset(SyntheticConfig.for_model(config), batch_size, seed=0)
    batch = collate([data[i] for i in range(batch_size)])
    return model, batch


def _step_function(mode: str, model, batch, batch_size: int):
    """A closure doing one full training step of `model` in `mode`, as training does it."""
    import torch
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    from fedmirasol.privacy.dp_optimizer import LeanDPOptimizer
    from fedmirasol.privacy.dp_training import per_sample_losses
    from ghost_clipping import MirasolGhostClipping  # benchmarks/ghost_clipping.py
    from fedmirasol.privacy.objective import per_sample_loss

    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    dp_args = dict(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch_size,
                   loss_reduction="mean")
    if mode == "plain":
        def step() -> None:
            sgd.zero_grad(set_to_none=True)
            per_sample_loss(model, batch, model(batch)).mean().backward()
            sgd.step()
        return step
    if mode == "ghost":
        wrapped = MirasolGhostClipping(model, loss_reduction="sum", max_grad_norm=1.0,
                                       use_ghost_clipping=True)
        ghost_optimizer = DPOptimizerFastGradientClipping(sgd, **dp_args)

        def step() -> None:
            ghost_optimizer.zero_grad(set_to_none=True)
            losses = per_sample_loss(model, batch, wrapped(batch))
            DPTensorFastGradientClipping(wrapped, ghost_optimizer, losses, "sum").backward()
            ghost_optimizer.step()
        return step
    gradients = mode.removesuffix("-secure").removesuffix("-inline")
    losses_of, _ = per_sample_losses(model, gradients)  # as training does
    if mode.endswith("-secure"):
        from fedmirasol.privacy.dp_training import SecureDPOptimizer
        from fedmirasol.privacy.secure_noise import SecureNoise

        optimizer = SecureDPOptimizer(sgd, noise=SecureNoise(), **dp_args)
    else:  # what training's seeded path uses (Opacus' release), with a generator of its own
        optimizer = LeanDPOptimizer(sgd, generator=torch.Generator().manual_seed(1),
                                    noise_ahead=not mode.endswith("-inline"), **dp_args)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses_of(batch).sum().backward()
        optimizer.step()
    step.settle = optimizer.wait_for_noise  # type: ignore[attr-defined]
    return step


def _settle(step) -> None:
    """Wait for the noise `step`'s optimizer draws ahead for its next step (if it does)."""
    getattr(step, "settle", lambda: None)()


def measure_times(modes: list[str], config_name: str, batch_size: int, steps: int,
                  threads: int, block: int = 1) -> dict:
    """Median seconds per step of every mode, blocks of `block` steps interleaved."""
    import copy

    model, batch = _setup(config_name, batch_size, threads)
    functions = {}
    for mode in modes:
        functions[mode] = _step_function(mode, copy.deepcopy(model), batch, batch_size)
        functions[mode]()  # warm-up (allocations, functorch tracing)
        _settle(functions[mode])
    wall: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    path: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(steps):
        shift = round_index % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            started, started_cpu = time.perf_counter(), time.process_time()
            started_path = time.thread_time()
            for _ in range(block):
                functions[mode]()
            _settle(functions[mode])
            wall[mode].append((time.perf_counter() - started) / block)
            cpu[mode].append((time.process_time() - started_cpu) / block)
            path[mode].append((time.thread_time() - started_path) / block)
    return {"seconds": {mode: statistics.median(values) for mode, values in wall.items()},
            "cpu_seconds": {mode: statistics.median(values) for mode, values in cpu.items()},
            "path_seconds": {mode: statistics.median(values) for mode, values in path.items()},
            "parameters": sum(p.numel() for p in model.parameters())}


def measure_memory(mode: str, config_name: str, batch_size: int, threads: int) -> dict:
    model, batch = _setup(config_name, batch_size, threads)
    step = _step_function(mode, model, batch, batch_size)
    before = rss_mib()
    for _ in range(3):
        step()
    _settle(step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mib": max(peak - before, 0.0)}


def ghost_norm_error(config_name: str, batch_size: int, threads: int) -> float:
    """Max relative error of ghost clipping's per-sample gradient norms against hooks'."""
    import torch
    from opacus import GradSampleModule

    from ghost_clipping import MirasolGhostClipping  # benchmarks/ghost_clipping.py
    from fedmirasol.privacy.objective import per_sample_loss

    model, batch = _setup(config_name, batch_size, threads)
    exact = GradSampleModule(model, loss_reduction="sum")
    per_sample_loss(model, batch, exact(batch)).sum().backward()
    norms = torch.stack([p.grad_sample.reshape(batch_size, -1).norm(dim=1)
                         for p in model.parameters()]).norm(dim=0)
    exact._close()
    model.zero_grad(set_to_none=True)
    ghost = MirasolGhostClipping(model, loss_reduction="sum", max_grad_norm=1.0,
                                 use_ghost_clipping=True)
    per_sample_loss(model, batch, ghost(batch)).sum().backward()
    ghost_norms = ghost.get_norm_sample()
    return float(((ghost_norms - norms).abs() / norms).max())


def run_point(args: argparse.Namespace, point: str, config_name: str, batch_size: int,
              modes: list[str]) -> dict:
    command = [sys.executable, __file__, "--point", point, "--configs", config_name,
               "--batch-sizes", str(batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads), "--block", str(args.block), "--modes", *modes]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        return {"failed": (completed.stderr.strip().splitlines() or ["no output"])[-1][:120]}
    return json.loads(lines[-1])


def _point(args: argparse.Namespace) -> dict:
    config_name, batch_size = args.configs[0], args.batch_sizes[0]
    try:
        if args.point == "ghost-check":
            return {"error": ghost_norm_error(config_name, batch_size, args.threads)}
        if args.point == "time":
            return measure_times(args.modes, config_name, batch_size, args.steps, args.threads,
                                 args.block)
        return measure_memory(args.point, config_name, batch_size, args.threads)
    except Exception as error:  # reported in the table: a mode that cannot run Mirasol
        return {"failed": f"{type(error).__name__}: {str(error)[:110]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=9, help="timed blocks per mode")
    parser.add_argument("--block", type=int, default=3,
                        help="consecutive steps of a mode per timed block")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--point", choices=MODES + ("time", "ghost-check"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(_point(args)))
        return
    modes = ["plain"] + [mode for mode in args.modes if mode != "plain"]
    print(f"{args.steps} interleaved timed blocks of {args.block} steps per mode, "
          f"{args.threads} torch thread(s), "
          f"load average {load_average()} at the start", flush=True)
    print(f"{'config':>6} {'batch':>5} {'mode':>9} {'params':>9} {'s/step':>8} "
          f"{'cpu s':>7} {'peak MiB':>9} {'time x':>7} {'cpu x':>6} {'path x':>6} "
          f"{'memory x':>9}", flush=True)
    for config_name in args.configs:
        for batch_size in args.batch_sizes:
            timing = run_point(args, "time", config_name, batch_size, modes)
            if "failed" in timing:
                print(f"{config_name:>6} {batch_size:>5} timing failed: {timing['failed']}")
                continue
            seconds, cpu, path = timing["seconds"], timing["cpu_seconds"], timing["path_seconds"]
            memory = {mode: run_point(args, mode, config_name, batch_size, [mode])
                      for mode in modes}
            base_memory = memory["plain"].get("peak_mib", float("nan"))
            for mode in modes:
                if "failed" in memory[mode]:
                    print(f"{config_name:>6} {batch_size:>5} {mode:>9} fails: "
                          f"{memory[mode]['failed']}")
                    continue
                peak = memory[mode]["peak_mib"]
                print(f"{config_name:>6} {batch_size:>5} {mode:>9} {timing['parameters']:>9,} "
                      f"{seconds[mode]:>8.3f} {cpu[mode]:>7.3f} {peak:>9.1f} "
                      f"{seconds[mode] / seconds['plain']:>7.2f} {cpu[mode] / cpu['plain']:>6.2f} "
                      f"{path[mode] / path['plain']:>6.2f} "
                      f"{peak / max(base_memory, 1e-9):>9.2f}", flush=True)
            if "ghost" in modes:
                check = run_point(args, "ghost-check", config_name, batch_size, ["ghost"])
                outcome = (f"fails: {check['failed']}" if "failed" in check
                           else f"max relative error {check['error']:.1e}")
                print(f"{config_name:>6} {batch_size:>5} ghost per-sample norms vs hooks: "
                      f"{outcome}", flush=True)
    print(f"load average {load_average()} at the end")


if __name__ == "__main__":
    main()
