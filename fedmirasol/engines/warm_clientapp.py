"""A site's long-running ClientApp executor for a SuperNode in `--isolation process` mode.

With Flower's default (`--isolation subprocess`) a SuperNode starts a fresh `flwr-clientapp`
process for every message, which imports torch, Flower and fedmirasol again each time (several
seconds a message, five messages a round under secure aggregation). In `--isolation process`
mode the SuperNode serves its Runtime API and leaves starting ClientApps to the site. This
executor is that site process: it imports the heavy modules once, then does what Flower's
`flower-superexec` does (poll the Runtime API for ClientApp tasks with `AcquireTask`, launch
each through Flower's exec plugin) with one difference: each task runs in a child forked
from this warm process, which runs Flower's own `flwr-clientapp` body (`run_clientapp`: pull
the message, load the ClientApp from the run's FAB, push the reply). Every message still gets
a fresh process (no state leaks from one task to the next; a crash takes only that task
down), without the imports.

The parent never runs torch operations, so the forked children start with no thread pools.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import time
from typing import Iterable

log = logging.getLogger("fedmirasol.engines")

# Imported once, before the first fork: what a fedmirasol ClientApp task would import.
PRELOAD = ("torch", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp",
           "fedmirasol.engines.apps", "fedmirasol.client.handlers", "opacus",
           "fedmirasol.privacy.dp_training", "fedmirasol.secagg.client")
POLL_SECONDS = 0.25  # between AcquireTask calls (flower-superexec's default: 1 s)


class ForkingExecutor:
    """Flower's SuperExec `Executor` interface: each ClientApp task in a forked child."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set]:
        from flwr.supercore.constant import TaskType

        del insecure, root_certificates_path
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, *args: object, **kwargs: object) -> None:
        """No capacity gate: every task gets its own child."""

    def launch(self, spec) -> object:  # noqa: ANN001 - Flower's ExecutionSpec / LaunchResult
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this executor runs ClientApps, not {spec.task_type}")
        pid = os.fork()
        if pid == 0:  # the child: one task, then exit without the parent's cleanup
            os._exit(_run_task(spec))
        self.children.add(pid)
        log.info("ClientApp task %s in process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap children that have exited."""
        for pid in list(self.children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    log.warning("ClientApp process %d exited with %d", pid,
                                os.waitstatus_to_exitcode(status))

    def close(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.children.clear()


def _run_task(spec) -> int:  # noqa: ANN001 - Flower's ExecutionSpec
    """In the forked child: Flower's `flwr-clientapp` for one task; its exit code."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    try:
        run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token,
                      insecure=spec.insecure,
                      certificates=validate_and_resolve_root_certificates(
                          spec.root_certificates_path, spec.insecure),
                      parent_pid=spec.parent_pid, runtime_dependency_install=False)
    except SystemExit as done:  # run_clientapp ends with flwr_exit (sys.exit)
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported by Flower; the child must not return
        log.exception("the ClientApp task failed")
        return 1
    return 0


def preload(modules: Iterable[str] = PRELOAD) -> list[str]:
    """Import `modules` (those present) once; the ones imported."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError as error:
            log.warning("not preloading %s: %s", name, error)
    return loaded


def serve(runtime_api_address: str, *, insecure: bool, root_certificates: str | None,
          poll_seconds: float = POLL_SECONDS, max_tasks: int = 0) -> None:
    """Preload, then launch every ClientApp task the SuperNode at `runtime_api_address`
    hands out (until killed, or after `max_tasks` tasks when > 0)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    started = time.perf_counter()
    loaded = preload()
    log.info("preloaded %s in %.1f s", ", ".join(loaded), time.perf_counter() - started)
    executor = ForkingExecutor()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker())
    plugin = AutoExecPlugin(runtime_api_address=runtime_api_address, insecure=insecure,
                            root_certificates_path=root_certificates,
                            runtime_dependency_install=False, executor=executor)
    launched = 0
    try:
        while not max_tasks or launched < max_tasks:
            executor.reconcile()
            types, _ = executor.get_eligible_capacity(set(plugin.supported_task_types))
            reply = client.AcquireTask(AcquireTaskRequest(supported_task_types=types))
            if reply.HasField("task") and reply.token:
                plugin.launch_task(token=reply.token, task=reply.task)
                launched += 1
            else:
                time.sleep(poll_seconds)
        while executor.children:
            executor.reconcile()
            time.sleep(poll_seconds)
    finally:
        client.close()
        executor.close()
