"""Ray for Flower's simulation engine: a private Ray started for one run, or an existing Ray
cluster (`simulation.ray-address`) that outlives it and may span several machines.

Flower's Ray backend uses Ray as it finds it when Ray is already initialized in the process,
so the simulation connects (or starts) Ray here and gives Flower only the per-client
resources. On a cluster every node needs the same Python environment and fedmirasol (the
workers import it); the driver's PYTHONPATH goes to them as the job's runtime environment.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from fedmirasol.config import RunConfig
from fedmirasol.errors import ConfigError

log = logging.getLogger("fedmirasol.engines")


@dataclass(frozen=True)
class RaySession:
    """The Ray this process uses for one simulation."""

    started: bool  # this process started it (and shuts it down at the end)
    cpus: float  # CPUs the virtual clients may use
    gpus: float  # GPUs the virtual clients may use
    address: str = ""  # the cluster attached to ("" when started here)


def _pythonpath() -> str:
    """This process's import path (the worktree or install that holds fedmirasol first), as a
    PYTHONPATH, also exported so that workers Ray starts from here inherit it."""
    entries = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    path = os.pathsep.join(dict.fromkeys(p for p in entries if p))
    os.environ["PYTHONPATH"] = path
    return path


def _private_cpus(config: RunConfig) -> int:
    threads = config.client.threads
    parallel = config.simulation.max_parallel_clients
    return parallel * threads if parallel else max(os.cpu_count() or 1, threads)


def open_ray(config: RunConfig) -> RaySession:
    """Connect to `simulation.ray-address`, or start a private Ray sized for the run.

    A private Ray is started without a runtime environment (the exported PYTHONPATH reaches
    its workers; Flower's would make Ray's runtime-env agent set one up before the first
    virtual client, about a second here) and with its workers at the caller's niceness (Ray's
    default, 15, starves the virtual clients on a shared machine). A Ray already initialized
    in this process (a caller's) is used as it is.
    """
    import ray

    address = config.simulation.ray_address
    if ray.is_initialized():
        return _session(started=False, address=address)
    pythonpath = _pythonpath()
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    if not address:
        ray.init(num_cpus=_private_cpus(config), include_dashboard=False,
                 _system_config={"worker_niceness": 0}, **common)
        return _session(started=True)
    try:
        _check_reachable(address)
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                 **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"simulation.ray-address = {address!r}: cannot attach to a Ray "
                          f"cluster there ({error}); start one with `ray start --head` (then "
                          "\"auto\" finds it) or leave the key empty to start a private "
                          "Ray") from error
    session = _session(started=False, address=address)
    log.info("attached to the Ray cluster at %s (%g CPUs, %g GPUs)", address, session.cpus,
             session.gpus)
    return session


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT with nothing listening fails here at once (`ray.init` would wait for it
    for minutes); "auto" and ray:// addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        raise ConnectionError(f"nothing answers at {address}: {error}") from error


def _session(started: bool, address: str = "") -> RaySession:
    import ray

    resources = ray.cluster_resources()
    return RaySession(started=started, cpus=float(resources.get("CPU", 0.0)),
                      gpus=float(resources.get("GPU", 0.0)), address=address)


def close_ray(session: RaySession) -> None:
    """Stop a Ray this process started; detach from a cluster (which keeps running)."""
    import ray

    if ray.is_initialized() and (session.started or session.address):
        ray.shutdown()


def client_resources(config: RunConfig, session: RaySession) -> dict[str, float]:
    """What one virtual client reserves: `client.threads` CPUs, or more when that would run
    more clients at once than `simulation.max-parallel-clients` allows; a share of the GPUs
    when the clients train on CUDA (Ray hides the GPUs from a worker that reserves none)."""
    cpus = float(config.client.threads)
    parallel = config.simulation.max_parallel_clients
    if parallel and session.cpus / cpus > parallel:
        cpus = math.floor(session.cpus / parallel * 1000) / 1000  # Ray counts in 1e-4 steps
    resources = {"num_cpus": cpus, "num_gpus": 0.0}
    if config.client.device != "cpu" and session.gpus > 0:
        resources["num_gpus"] = session.gpus / max(1, int(session.cpus // cpus))
    return resources


def backend_config(config: RunConfig, session: RaySession) -> dict[str, Any]:
    """Flower's backend config for a Ray that is already up (Flower then initializes none)."""
    return {"client_resources": client_resources(config, session), "init_args": {}}


def parallel_clients(config: RunConfig, session: RaySession) -> int:
    """How many virtual clients run at once: the size of Flower's actor pool (whole clients
    per node of the cluster)."""
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    return pool_size_from_resources(client_resources(config, session))
