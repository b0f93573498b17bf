"""Run the Flower app in Flower's simulation engine (Ray backend), fresh or resumed."""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from fedmirasol.config import RunConfig, with_values
from fedmirasol.errors import ConfigError
from fedmirasol.engines.apps import build_client_app, build_server_app
from fedmirasol.engines.ray_backend import (
    backend_config,
    close_ray,
    open_ray,
    parallel_clients,
)
from fedmirasol.secagg.identity import Identity, provision
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.report import print_progress
from fedmirasol.runs.resume import open_run
from fedmirasol.server.aggregators import Auditor
from fedmirasol.server.loop import Progress

log = logging.getLogger("fedmirasol.engines")


class StopRun(Exception):
    """Raise from a progress callback to stop a run after the round it reports (the run
    directory keeps its checkpoints and can be resumed)."""


class _DropRunSimulationDeprecation(logging.Filter):
    """Drops Flower's "`run_simulation` is deprecated" warning (and nothing else).

    Flower 1.42 deprecates `flwr.simulation.run_simulation` in favour of `flwr run`, but
    offers no other way to run a simulation in this process: `flwr run` goes through a
    SuperLink and runs the ServerApp in a subprocess, so a Python caller could not pass the
    app objects, a run directory or a progress callback. `fedmirasol simulate` therefore still
    calls it (it exists, unchanged, in 1.42) and the warning, which asks the user to change
    something they cannot, is dropped; `flwr run .` is the supported path beside it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = " ".join(str(arg) for arg in record.args) if isinstance(record.args, tuple) \
            else str(record.msg)
        return "`run_simulation` function is deprecated" not in text


@contextlib.contextmanager
def _importing_meanwhile(module: str) -> Iterator[None]:
    """Import `module` on a thread while the body runs (Ray's start mostly waits for its
    processes); a failed import is left to the import that needs the module."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=load, name=f"import {module}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _run_simulation(**kwargs: Any) -> None:
    """Flower's run_simulation, without its deprecation warning (see the filter above)."""
    from flwr.simulation import run_simulation

    flower = logging.getLogger("flwr")
    quiet = _DropRunSimulationDeprecation()
    flower.addFilter(quiet)
    try:
        run_simulation(**kwargs)
    finally:
        flower.removeFilter(quiet)


def simulate(config: RunConfig | None = None, *, resume: str | Path | None = None,
             progress: Progress | None = print_progress, quiet_flower: bool = True,
             auditor: Auditor | None = None, node_config: Mapping[str, Any] | None = None
             ) -> Path:
    """Run `config` (or resume the run directory `resume`) to the end; return the run dir.

    A new run directory that fails before its first round is removed again (it would hold
    nothing to report or resume). `auditor` and `node_config` (node-config keys every virtual
    client gets, e.g. an audit's canary directory) serve `fedmirasol privacy-audit`."""
    opened = open_run(config, resume)
    with opened.guard():
        _simulate(opened.config, opened.run_dir, opened.checkpoint, progress, quiet_flower,
                  auditor, node_config or {})
    sys.stdout.flush()
    return opened.run_dir


def _identities(config: RunConfig) -> list[Identity] | None:
    """Under secure aggregation, one long-term key per virtual client (this process is the
    trusted harness that provisions them, as a deployment's `fedmirasol certs` would)."""
    return provision(config.data.num_clients) if config.secagg.enabled else None


def site_privacy_node_config(config: RunConfig) -> dict[str, Any]:
    """The run config's [site-privacy], as the node-config keys (privacy.<key>) every virtual
    client gets: the simulation plays the sites, so it sets their policy."""
    return {f"privacy.{key}": value for key, value in config.site_privacy.table().items()}


def _he_keys(config: RunConfig, run_dir: Path) -> tuple[RunConfig, str | None]:
    """Under homomorphic encryption, the config naming the server's context file and the
    sites' file for every virtual client: the pair in he.public-context's folder (`fedmirasol
    he-keys --out DIR` writes both), else a pair made in (or, resuming, found in) the run
    directory: this process plays the key provisioner, as `fedmirasol he-keys` would."""
    if not config.he.enabled:
        return config, None
    from fedmirasol.he.keyfiles import SERVER_FILE, SIMULATION_KEYS_DIR, SITE_FILE, write_key_pair
    from fedmirasol.he.params import CkksParameters

    if config.he.public_context:
        site = Path(config.he.public_context).parent / SITE_FILE
        if not site.is_file():
            raise ConfigError(f"he.public-context = {config.he.public_context!r}: a simulation "
                              f"plays the sites too and needs {site} beside it (`fedmirasol "
                              "he-keys --out DIR` writes both)")
        return config, str(site)
    keys = run_dir / SIMULATION_KEYS_DIR
    if not (keys / SITE_FILE).is_file():
        write_key_pair(keys, CkksParameters.from_config(config.he))
    named = with_values(config, {"he.public-context": str(keys / SERVER_FILE)})
    return named, str(keys / SITE_FILE)


def _decrypt_final_model(config: RunConfig, run_dir: Path, secret: str) -> None:
    """As a site would (`fedmirasol he-decrypt`): the final model, and its test accuracy in
    report.json (the server, holding no key, evaluated nothing)."""
    from fedmirasol.engines.he_final import decrypted_final_model, write_final_model
    from fedmirasol.he.keyfiles import load_site
    from fedmirasol.runs.report import add_to_report
    from fedmirasol.server.evaluation import make_evaluate_fn

    site = load_site(secret)
    write_final_model(run_dir, site)
    figures = make_evaluate_fn(config)(decrypted_final_model(run_dir, site))
    add_to_report(run_dir, baseline={"decrypted_final_test_accuracy": figures["test-accuracy"],
                                     "decrypted_final_test_loss": figures["test-loss"]})


def _simulate(config: RunConfig, run_dir: Path, checkpoint: rundir.Checkpoint | None,
              progress: Progress | None, quiet_flower: bool, auditor: Auditor | None,
              node_config: Mapping[str, Any]) -> None:
    config, he_secret = _he_keys(config, run_dir)
    if quiet_flower:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    import ray  # noqa: F401  (before the thread below and Ray's start, which both need it)

    with _importing_meanwhile("flwr.simulation"):  # Flower's engine: about 1 s of imports
        session = open_ray(config)
    try:
        server_app = build_server_app(config, run_dir, checkpoint, progress,
                                      simulation_slots=parallel_clients(config, session),
                                      auditor=auditor)
        _run_simulation(
            server_app=server_app,
            client_app=build_client_app(identities=_identities(config),
                                        node_defaults={**site_privacy_node_config(config),
                                                       **node_config},
                                        he_secret=he_secret),
            num_supernodes=config.data.num_clients,
            backend_config=backend_config(config, session),
        )
    except RuntimeError as error:
        if isinstance(error.__cause__, StopRun) or isinstance(error, StopRun):
            raise StopRun(str(error.__cause__ or error)) from error
        raise
    finally:  # Flower shuts Ray down at the end; not when it failed before
        close_ray(session)
    if not (run_dir / rundir.REPORT_FILE).is_file():
        raise RuntimeError(f"the simulation ended without finishing {run_dir}; see the log "
                           "above; `fedmirasol simulate --resume` continues it")
    if he_secret is not None:
        _decrypt_final_model(config, run_dir, he_secret)
