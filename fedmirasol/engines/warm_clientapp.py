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
from typing import Callable, Iterable

log = logging.getLogger("fedmirasol.engines")

# Flower has no public API for a SuperNode's task executor (its public surface is
# `flwr.app`, `flwr.clientapp`, `flwr.serverapp`, `flwr.simulation` and the CLIs; the only
# public way to run a ClientApp task is the `flwr-clientapp` command, which imports everything
# per message: the cost this module removes). So it uses the private `flwr.supercore` /
# `flwr.supernode` pieces `flower-superexec` and `flwr-clientapp` are built from: the
# `Executor` protocol, `AutoExecPlugin`, `RuntimeHttpClient`, `run_clientapp`. pyproject pins
# flwr exactly (tests/test_lock.py) and tests/test_warm_clientapp.py imports every one of them
# and runs the executor, so a Flower upgrade that moves them fails the tests, not a site.

# Imported once, before the first fork: what a fedmirasol ClientApp task would import.
# torch._dynamo: imported lazily by torch's optimizers on the first step (~3 s of a loaded
# machine's time per message otherwise).
PRELOAD = ("torch", "torch._dynamo", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp",
           "fedmirasol.engines.apps", "fedmirasol.client.handlers", "opacus",
           "fedmirasol.privacy.dp_training", "fedmirasol.secagg.client")
POLL_SECONDS = 0.1  # between AcquireTask calls on this machine (flower-superexec's: 1 s)
MAX_TASKS_AT_ONCE = 4  # forked ClientApp processes alive at once (a SuperNode sends one at a time)
CLOSE_GRACE_SECONDS = 10.0  # close(): SIGTERM, then SIGKILL whatever is left after this


class ForkingExecutor:
    """Flower's SuperExec `Executor` interface: each ClientApp task in a forked child, at
    most `max_children` at once (no task is acquired while that many run)."""

    def __init__(self, max_children: int = MAX_TASKS_AT_ONCE,
                 run_task: Callable[[object], int] | None = None) -> None:
        if max_children < 1:
            raise ValueError(f"max_children must be >= 1, not {max_children}")
        self.max_children = max_children
        self.children: dict[int, float] = {}  # pid -> when it was forked (monotonic)
        self._run_task = run_task or _run_task

    def has_capacity(self) -> bool:
        return len(self.children) < self.max_children

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set]:
        from flwr.supercore.constant import TaskType

        del insecure, root_certificates_path
        if not self.has_capacity():
            return set(), set()
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, *args: object, poll_seconds: float = POLL_SECONDS,
                          **kwargs: object) -> None:
        """Block until fewer than `max_children` tasks run."""
        del args, kwargs
        while not self.has_capacity():
            time.sleep(poll_seconds)
            self.reconcile()

    def launch(self, spec) -> object:  # noqa: ANN001 - Flower's ExecutionSpec / LaunchResult
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"this executor runs ClientApps, not {spec.task_type}")
        self.reconcile()
        if not self.has_capacity():
            return LaunchResult.capacity_rejected(
                f"{len(self.children)} ClientApp tasks already run (at most "
                f"{self.max_children} at once)")
        pid = os.fork()
        if pid == 0:  # the child: one task, then exit without the parent's cleanup
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
                code = self._run_task(spec)
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("ClientApp task %s in process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap children that have exited."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # already reaped elsewhere
                self.children.pop(pid, None)
                continue
            if done:
                took = time.monotonic() - self.children.pop(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    log.warning("ClientApp process %d exited with %d after %.1f s", pid,
                                os.waitstatus_to_exitcode(status), took)
                else:
                    log.info("ClientApp process %d done in %.1f s", pid, took)

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """SIGTERM the running tasks (Flower's ClientApp pushes its status on SIGTERM), wait
        up to `grace` seconds for them, SIGKILL the rest; every child is reaped."""
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            time.sleep(0.05)
            self.reconcile()
        for pid in list(self.children):
            log.warning("ClientApp process %d still ran %.0f s after SIGTERM: killed", pid,
                        grace)
            _signal(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


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
          poll_seconds: float = POLL_SECONDS, max_tasks: int = 0,
          max_at_once: int = MAX_TASKS_AT_ONCE) -> None:
    """Preload, then launch every ClientApp task the SuperNode at `runtime_api_address`
    hands out (until killed, or after `max_tasks` tasks when > 0)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    started = time.perf_counter()
    loaded = preload()
    log.info("preloaded %s in %.1f s", ", ".join(loaded), time.perf_counter() - started)
    executor = ForkingExecutor(max_at_once)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker())
    plugin = AutoExecPlugin(runtime_api_address=runtime_api_address, insecure=insecure,
                            root_certificates_path=root_certificates,
                            runtime_dependency_install=False, executor=executor)
    launched = 0
    signal.signal(signal.SIGTERM, _stop)  # a supervisor's stop: close() the running tasks
    try:
        while not max_tasks or launched < max_tasks:
            executor.reconcile()  # reap the finished
            executor.wait_for_capacity(poll_seconds=poll_seconds)
            types, _ = executor.get_eligible_capacity(set(plugin.supported_task_types))
            reply = client.AcquireTask(AcquireTaskRequest(supported_task_types=types))
            if reply.HasField("task") and reply.token:
                result = plugin.launch_task(token=reply.token, task=reply.task)
                if result != LaunchResult.accepted():
                    log.error("task %s not launched: %s %s", reply.task.task_id,
                              result.status, result.message or "")
                launched += 1
            else:
                time.sleep(poll_seconds)
        while executor.children:
            executor.reconcile()
            time.sleep(poll_seconds)
    finally:
        client.close()
        executor.close()
