"""The privacy audit over a grid of settings, side by side: lower bound against the reported
epsilon.

Every setting runs `fedmirasol privacy-audit`'s pipeline (canaries drawn, training, scores, the
one-run bound) on the same base config (default: simulations/audit.toml), in this process
(`fedmirasol.testing.in_process`, no Ray), one after the other, and the script prints one
table row per setting: the accountant's epsilon, the audit's lower bound at 95 %, the
two-Gaussian estimate, m, r, v, the most the audit could show, wall time and the load average.

Settings (`--settings`, default all):
- ``no-dp``: DP off (the audit's power: what it shows when nothing is hidden);
- ``eps-1``, ``eps-4``, ``eps-8``: sample-level DP-SGD calibrated to that epsilon (soundness);
- ``noise/1000``, ``no-clip``, ``twice``: DP-SGD at epsilon 0.5 broken on purpose
  (`fedmirasol.testing.broken_dp`; clip norm 0.01 so that clipping matters), which the audit
  should catch;
- ``full-batch``, ``twice-full-batch``: DP-SGD with every clip in every step (sample rate 1,
  noise multiplier 2, 4 local epochs, one round, 256 canaries; accountant epsilon 5.38), as is
  and with each clip counted twice: the regime where the doubled clip is plainest to this audit
  (no subsampling to hide a step, every step in the update it scores). See
  `audit_ideal.py` for why even so it is not caught;
- ``client-weak``, ``client-z2``: a client-level audit (canary clients) with noise multiplier
  0.01 and 2.

    OMP_NUM_THREADS=1 python benchmarks/audit_grid.py
    python benchmarks/audit_grid.py --settings no-dp eps-8 --set audit.canaries=64
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from fedmirasol.config import load_config
from fedmirasol.engines.audit import privacy_audit
from fedmirasol.testing import broken_dp
from fedmirasol.testing.in_process import run_in_process

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ["privacy.enabled=true", "privacy.target-epsilon=0.5", "privacy.max-grad-norm=0.01",
          "client.lr=0.01"]
FULL_BATCH = ["privacy.enabled=true", "privacy.target-epsilon=0", "privacy.noise-multiplier=2",
              "privacy.sample-rate=1.0", "privacy.max-grad-norm=0.01", "client.lr=0.01",
              "client.local-epochs=4", "num-rounds=1", "audit.canaries=256"]
CLIENT = ["audit.level='client'", "privacy.enabled=false", "privacy.client-level=true",
          "privacy.client-clip-norm=0.1"]
SETTINGS: dict[str, tuple[list[str], str | None]] = {
    "no-dp": (["privacy.enabled=false"], None),
    "eps-1": (["privacy.target-epsilon=1"], None),
    "eps-4": (["privacy.target-epsilon=4"], None),
    "eps-8": (["privacy.target-epsilon=8"], None),
    "noise/1000": (BROKEN, "noise / 1000"),
    "no-clip": (BROKEN, "clipping off"),
    "twice": (BROKEN, "each clip twice"),
    "full-batch": (FULL_BATCH, None),
    "twice-full-batch": (FULL_BATCH, "each clip twice"),
    "client-weak": (CLIENT + ["privacy.client-noise-multiplier=0.01"], None),
    "client-z2": (CLIENT + ["privacy.client-noise-multiplier=2"], None),
}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "simulations" / "audit.toml")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="applied to every setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| setting | accountant epsilon | lower bound (95 %) | estimate | m | r | v | "
          "best possible | s | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="audit-grid-") as runs:
        for name in args.settings:
            overrides, broken = SETTINGS[name]
            config = load_config(args.config, [*overrides, *args.overrides,
                                               f"output.runs-dir='{runs}'"])
            started = time.perf_counter()
            with broken_dp.BREAKS[broken]() if broken else contextlib.nullcontext():
                _, table = privacy_audit(config, engine=run_in_process, progress=None)
            print(f"| {name} | {_figure(table['accountant-epsilon'])} | "
                  f"{table['epsilon-lower-bound']:.3f} | {_figure(table.get('epsilon-estimate'))} "
                  f"| {table['m']} | {table['r']} | {table['v']} | "
                  f"{table['best-possible-lower-bound']:.3f} | "
                  f"{time.perf_counter() - started:.0f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
