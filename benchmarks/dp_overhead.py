"""DP-SGD against plain SGD on the same batches: step time and peak memory, as ratios.

For each model config (tiny, small) and each mode, a fresh subprocess builds the model and a
fixed batch of synthetic clips and times full optimizer steps on the CPU (median after a
warm-up): `plain` (the same per-sample objective averaged, backward, SGD step), and Opacus
DP-SGD (per-sample gradients, per-sample clipping, Gaussian noise, step) with per-sample
gradients from `hooks`, `functorch`, or `ghost` clipping. Memory is the subprocess's peak RSS
during the steps minus its RSS before the first step (activations, gradients, per-sample
gradients), as chunk_scaling.py measures it.

Ghost clipping is also checked for correctness on Mirasol: its per-sample gradient norms
are compared with the exact ones from hooks. With Opacus 1.6 it does not run on Mirasol at
all (its embedding norm sampler `view`s the non-contiguous learned-token indices and
raises); and reading its source, a ghost-clipped layer keeps only the norm of its last call
(``param._norm_sample = ...``), which would be wrong for Mirasol's encoders and combiner,
called once per chunk. Hence fedmirasol uses hooks (exact, tests/test_opacus_compat.py).

Measured on this project's 2-core CPU machine, shared (load average ~6), batch 8, 1 thread:
tiny (0.30M params) hooks 1.65x time, 1.08x memory; functorch 3.81x, 1.16x.
small (2.1M params) hooks 2.01x time, 1.38x memory; functorch 2.61x, 1.52x.

    python benchmarks/dp_overhead.py                    # tiny and small, batch 8
    python benchmarks/dp_overhead.py --configs tiny --batch-size 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("plain", "hooks", "functorch", "ghost")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


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
    """A closure doing one full training step in `mode`."""
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

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
        wrapped = GradSampleModuleFastGradientClipping(model, loss_reduction="mean",
                                                       max_grad_norm=1.0, use_ghost_clipping=True)
        optimizer = DPOptimizerFastGradientClipping(sgd, **dp_args)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses = per_sample_loss(model, batch, wrapped(batch))
            DPTensorFastGradientClipping(wrapped, optimizer, losses, "mean").backward()
            optimizer.step()
        return step
    wrapped = GradSampleModule(model, loss_reduction="mean", force_functorch=mode == "functorch")
    optimizer = DPOptimizer(sgd, **dp_args)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        per_sample_loss(model, batch, wrapped(batch)).mean().backward()
        optimizer.step()
    return step


def measure(mode: str, config_name: str, batch_size: int, steps: int, threads: int) -> dict:
    model, batch = _setup(config_name, batch_size, threads)
    step = _step_function(mode, model, batch, batch_size)
    before = rss_mib()
    step()  # warm-up (allocations, functorch tracing)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "config": config_name, "seconds": statistics.median(times),
            "peak_mib": max(peak - before, 0.0),
            "parameters": sum(p.numel() for p in model.parameters())}


def ghost_norm_error(config_name: str, batch_size: int, threads: int) -> float:
    """Max relative error of ghost clipping's per-sample gradient norms against hooks'."""
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    from fedmirasol.privacy.objective import per_sample_loss

    model, batch = _setup(config_name, batch_size, threads)
    exact = GradSampleModule(model, loss_reduction="sum")
    per_sample_loss(model, batch, exact(batch)).sum().backward()
    norms = torch.stack([p.grad_sample.reshape(batch_size, -1).norm(dim=1)
                         for p in model.parameters()]).norm(dim=0)
    exact._close()
    model.zero_grad(set_to_none=True)
    ghost = GradSampleModuleFastGradientClipping(model, loss_reduction="sum", max_grad_norm=1.0,
                                                 use_ghost_clipping=True)
    per_sample_loss(model, batch, ghost(batch)).sum().backward()
    ghost_norms = ghost.get_norm_sample()
    return float(((ghost_norms - norms).abs() / norms).max())


def run_point(args: argparse.Namespace, mode: str, config_name: str) -> dict:
    command = [sys.executable, __file__, "--point", mode, "--configs", config_name,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--point", choices=MODES + ("ghost-check",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        try:
            if args.point == "ghost-check":
                result = {"error": ghost_norm_error(args.configs[0], args.batch_size,
                                                    args.threads)}
            else:
                result = measure(args.point, args.configs[0], args.batch_size, args.steps,
                                 args.threads)
        except Exception as error:  # reported in the table: a mode that cannot run Mirasol
            result = {"failed": f"{type(error).__name__}: {str(error)[:90]}"}
        print(json.dumps(result))
        return
    with open("/proc/loadavg") as handle:
        print(f"batch {args.batch_size}, {args.steps} timed steps, {args.threads} thread(s), "
              f"load average {handle.read().split()[0]}")
    print(f"{'config':>6} {'mode':>10} {'params':>9} {'s/step':>8} {'peak MiB':>9} "
          f"{'time x':>7} {'memory x':>9}")
    for config_name in args.configs:
        results = {mode: run_point(args, mode, config_name) for mode in args.modes}
        base = results.get("plain")
        for mode, r in results.items():
            if "failed" in r:
                print(f"{config_name:>6} {mode:>10} fails on Mirasol: {r['failed']}")
                continue
            time_ratio = r["seconds"] / base["seconds"] if base else float("nan")
            memory_ratio = r["peak_mib"] / max(base["peak_mib"], 1e-9) if base else float("nan")
            print(f"{config_name:>6} {mode:>10} {r['parameters']:>9,} {r['seconds']:>8.3f} "
                  f"{r['peak_mib']:>9.1f} {time_ratio:>7.2f} {memory_ratio:>9.2f}", flush=True)
        if "ghost" in args.modes:
            check = run_point(args, "ghost-check", config_name)
            outcome = (f"fails: {check['failed']}" if "failed" in check
                       else f"max relative error {check['error']:.1%}")
            print(f"{config_name:>6} ghost per-sample norms vs hooks: {outcome}", flush=True)


if __name__ == "__main__":
    main()
