"""benchmarks/gpu_check.py --dry-run: the GPU check's code path on the CPU (tiny config)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--json", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["stage"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"train tiny", "dp-sgd ew tiny", "federated round"}
    train = rows["train tiny"]
    # Counted FLOPs of forward + backward: at least 2 per parameter and clip (one
    # multiply-add per weight for each clip's forward alone).
    assert train["gflop_per_step"] * 1e9 >= 2 * train["parameters_m"] * 1e6 * train["batch"]
    assert train["clips_per_s"] > 0 and train["mfu"] is None  # no peak FLOP/s for a CPU
    assert train["peak_mib"] is None
    assert rows["dp-sgd ew tiny"]["ew_over_plain"] > 0
    round_ = rows["federated round"]
    assert round_["clients"] == 2 and round_["rejected"] == 0
    assert math.isfinite(round_["train_loss"])
    assert "| train tiny | ok |" in done.stdout
