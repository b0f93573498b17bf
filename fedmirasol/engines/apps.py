"""The Flower ServerApp and ClientApp, built over the library.

`server/server_app.py` and `clients/client_app.py` (what `flwr run .` loads) and
`fedmirasol simulate` all use these builders, so both paths run the same app.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Mapping

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmirasol.client import handlers as client_handlers
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.report import print_progress
from fedmirasol.config.legacy import from_flower_run_config
from fedmirasol.server.loop import FederatedRun, Progress
from fedmirasol.secagg import client as secagg_client

log = logging.getLogger("fedmirasol.server")


def build_client_app() -> ClientApp:
    app = ClientApp()
    app.train()(client_handlers.handle_train)
    app.evaluate()(client_handlers.handle_evaluate)
    app.query()(client_handlers.handle_query)
    secagg_client.register(app)  # the secure-aggregation stages (used when secagg.enabled)
    return app


def build_server_app(config: Mapping[str, Any] | None = None, run_dir: Path | None = None,
                     checkpoint: rundir.Checkpoint | None = None,
                     progress: Progress | None = None, simulation_slots: int = 0
                     ) -> ServerApp:
    """A ServerApp for `config` writing `run_dir` (resuming after `checkpoint` if given).

    `simulation_slots` > 0: the app runs in Flower's simulation engine in this process
    (`fedmirasol simulate`), which numbers its nodes' partitions itself and runs that many
    virtual clients at once.

    Without `config` (under `flwr run`), the config comes from the Flower run config, a
    new run directory is created under `output.runs-dir` (or the run in
    `output.resume-from` continues), and progress is printed per round.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else from_flower_run_config(context.run_config)
        directory, resume_from = run_dir, checkpoint
        if directory is None and cfg["output"]["resume-from"]:  # a deployed run, restarted
            from fedmirasol.runs.resume import open_for_resume

            directory = Path(cfg["output"]["resume-from"])
            cfg, resume_from = open_for_resume(directory)
        guard: ContextManager[Any] = nullcontext()
        if directory is None:
            directory = rundir.create(cfg["output"]["runs-dir"], cfg["name"])
            rundir.write_config(directory, cfg)
            print(f"fedmirasol: run directory {directory.resolve()}", flush=True)
            guard = rundir.removed_if_failed_early(directory)  # made here: removed here
        with guard:
            run = FederatedRun(grid, cfg, directory,
                               progress if config is not None else print_progress,
                               simulation_slots=simulation_slots)
            if resume_from is not None:
                run.resume(resume_from)
            run.run()
        if cfg.output.plots:
            from fedmirasol.runs.plots import plot_run

            plot_run(directory)

    return app
