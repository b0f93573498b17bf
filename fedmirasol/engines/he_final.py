"""A site's decryption of a homomorphic-encryption run's final model.

The server of such a run holds only the encrypted sum of the last round's replies (its last
checkpoint); a site, with the federation's secret context, decrypts it and runs the server's
step, as a client starting the next round would, and writes the run's final model.
"""

from __future__ import annotations

from pathlib import Path

from fedmirasol.client.he import HEOpener
from fedmirasol.core.parameters import NumpyState
from fedmirasol.errors import ConfigError
from fedmirasol.he.ckks import SiteContext
from fedmirasol.he.wire import is_encrypted
from fedmirasol.runs import run_dir as rundir
from fedmirasol.server.aggregators.he_step import ServerStepOnClients
from fedmirasol.server.evaluation import full_state
from fedmirasol.task.model import model_config


def decrypted_final_model(run_dir: str | Path, site: SiteContext) -> NumpyState:
    """The global shared parameters after the run's last checkpointed round."""
    config = rundir.read_config(run_dir)
    checkpoint = rundir.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(f"{run_dir} has no checkpoint: no round of it completed")
    if not is_encrypted(checkpoint.global_shared):  # no round's sum: the initial model
        return checkpoint.global_shared
    model, _ = HEOpener(ServerStepOnClients()).open_state(site, config,
                                                           checkpoint.global_shared)
    return model


def write_final_model(run_dir: str | Path, site: SiteContext) -> Path:
    """Decrypt the run's final model into its run directory (`final_model.pt`)."""
    config = rundir.read_config(run_dir)
    model = decrypted_final_model(run_dir, site)
    return rundir.save_final_model(Path(run_dir), full_state(config, model),
                                   model_config(config).to_dict())
