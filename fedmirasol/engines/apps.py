"""The Flower ServerApp and ClientApp, built over the library.

`server/server_app.py` and `clients/client_app.py` (what `flwr run .` loads) and
`fedmirasol simulate` all use these builders, so both paths run the same app.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmirasol.client import handlers as client_handlers
from fedmirasol.client.he import HEOpener
from fedmirasol.client.mods import client_mods
from fedmirasol.client.secure import secure_hooks
from fedmirasol.engines.client_server_step import DeferredServerStep
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.report import print_progress
from fedmirasol.runs.resume import OpenedRun, open_run
from fedmirasol.config import RunConfig, from_flower_run_config
from fedmirasol.pretrained.checkpoint import with_digest
from fedmirasol.server.aggregators import Auditor
from fedmirasol.server.exchange import for_deployment
from fedmirasol.server.loop import FederatedRun, Progress
from fedmirasol.secagg import client as secagg_client
from fedmirasol.secagg.identity import Identity

log = logging.getLogger("fedmirasol.server")


def build_client_app(identities: Sequence[Identity] | None = None,
                     node_defaults: Mapping[str, Any] | None = None,
                     he_secret: str | None = None) -> ClientApp:
    """The ClientApp (`identities`: a simulation's provisioned long-term keys by partition id,
    for secure aggregation; None: each node's own, from its node config; `node_defaults`:
    node-config keys a simulation gives every virtual client, e.g. its site privacy policy;
    `he_secret`: a simulation's site CKKS context file, for homomorphic encryption)."""
    app = ClientApp(mods=client_mods(node_defaults))
    # under homomorphic encryption the server's arrays are its encrypted state: the clients
    # decrypt it and run the server's step (ServerStepOnClients, imported only then), and seal
    # their updates
    opener = HEOpener(DeferredServerStep(), he_secret)
    app.train()(functools.partial(client_handlers.handle_train, opener=opener))
    app.evaluate()(functools.partial(client_handlers.handle_evaluate, opener=opener))
    app.query()(client_handlers.handle_query)
    # the secure-aggregation stages (used when secagg.enabled) mask what handle_train returns
    secagg_client.register(app, secure_hooks(identities))
    return app


def build_server_app(config: RunConfig | None = None, run_dir: Path | None = None,
                     checkpoint: rundir.Checkpoint | None = None,
                     progress: Progress | None = None, simulation_slots: int = 0,
                     auditor: Auditor | None = None) -> ServerApp:
    """A ServerApp for `config` writing `run_dir` (resuming after `checkpoint` if given).

    `simulation_slots` > 0: the app runs in Flower's simulation engine in this process
    (`fedmirasol simulate`), which numbers its nodes' partitions itself and runs that many
    virtual clients at once. `auditor`: an audit run's (`fedmirasol privacy-audit`).

    Without `config` (under `flwr run`), the config comes from the Flower run config, a
    new run directory is created under `output.runs-dir` (or the run in
    `output.resume-from` continues), and progress is printed per round.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None \
            else with_digest(from_flower_run_config(context.run_config))
        if run_dir is not None:  # the caller (`fedmirasol simulate`) opened the run directory
            opened = OpenedRun(run_dir, cfg, checkpoint, created=False)
        else:  # a new run, or a deployed run restarted (output.resume-from)
            opened = open_run(cfg, cfg.output.resume_from or None)
        with opened.guard():  # a directory made here is removed here if the run fails early
            grid = for_deployment(grid, opened.config.server.pull_interval)
            run = FederatedRun(grid, opened.config, opened.run_dir,
                               progress if config is not None else print_progress,
                               simulation_slots=simulation_slots, auditor=auditor)
            if opened.checkpoint is not None:
                run.resume(opened.checkpoint)
            run.run()
        if opened.config.output.plots:
            from fedmirasol.runs.plots import plot_run

            plot_run(opened.run_dir)

    return app
