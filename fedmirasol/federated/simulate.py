"""Run the Flower app in Flower's simulation engine (Ray backend), fresh or resumed."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from fedmirasol.federated import run_dir as rundir
from fedmirasol.federated.apps import build_client_app, build_server_app
from fedmirasol.federated.report import print_progress
from fedmirasol.federated.server_loop import Progress


class StopRun(Exception):
    """Raise from a progress callback to stop a run after the round it reports (the run
    directory keeps its checkpoints and can be resumed)."""


def backend_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Ray resources: `client.threads` CPUs per virtual client; as many clients in parallel as
    the cores allow, or `simulation.max-parallel-clients`."""
    threads = config["client"]["threads"]
    parallel = config["simulation"]["max-parallel-clients"]
    cpus = parallel * threads if parallel else max(os.cpu_count() or 1, threads)
    return {
        "client_resources": {"num_cpus": threads, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus},
    }


def simulate(config: Mapping[str, Any] | None = None, *, resume: str | Path | None = None,
             progress: Progress | None = print_progress, quiet_flower: bool = True) -> Path:
    """Run `config` (or resume the run directory `resume`) to the end; return the run dir."""
    from flwr.simulation import run_simulation

    checkpoint = None
    if resume is not None:
        from fedmirasol.deploy.resume import open_for_resume

        run_dir = Path(resume)
        config, checkpoint = open_for_resume(run_dir)
    elif config is None:
        raise ValueError("simulate needs a config or a run directory to resume")
    else:
        run_dir = rundir.create(config["output"]["runs-dir"], config["name"])
        rundir.write_config(run_dir, config)
    print(f"fedmirasol: run directory {run_dir.resolve()}", flush=True)
    if quiet_flower:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    server_app = build_server_app(config, run_dir, checkpoint, progress)
    try:
        run_simulation(
            server_app=server_app, client_app=build_client_app(),
            num_supernodes=config["data"]["num-clients"], backend_config=backend_config(config),
        )
    except RuntimeError as error:
        if isinstance(error.__cause__, StopRun) or isinstance(error, StopRun):
            raise StopRun(str(error.__cause__ or error)) from error
        raise
    if not (run_dir / rundir.REPORT_FILE).is_file():
        raise RuntimeError(f"the simulation ended without finishing {run_dir}; see the log "
                           "above; `fedmirasol simulate --resume` continues it")
    sys.stdout.flush()
    return run_dir
