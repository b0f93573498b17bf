"""The warm ClientApp executor (`fedmirasol clientapp-server`): its cap on tasks at once,
its shutdown, and the private Flower pieces it is built from."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import LaunchResult

from fedmirasol.engines.warm_clientapp import ForkingExecutor


def _spec(task_id: int, task_type: TaskType = TaskType.CLIENT_APP) -> SimpleNamespace:
    return SimpleNamespace(task_type=task_type, task_id=task_id)


def _wait(condition, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child any more: reaped, no zombie left
        return True
    return False


def test_no_task_is_taken_while_the_cap_of_children_runs(tmp_path: Path) -> None:
    release = tmp_path / "release"

    def task(spec) -> int:  # noqa: ANN001 - runs in the forked child
        (tmp_path / f"started-{spec.task_id}").touch()
        while not release.exists():
            time.sleep(0.01)
        return 0

    executor = ForkingExecutor(max_children=2, run_task=task)
    try:
        assert executor.launch(_spec(1)) == LaunchResult.accepted()
        assert executor.launch(_spec(2)) == LaunchResult.accepted()
        _wait(lambda: (tmp_path / "started-1").exists() and (tmp_path / "started-2").exists())
        # at the cap: the SuperNode is asked for no task type, and a launch is refused
        assert executor.get_eligible_capacity({TaskType.CLIENT_APP}) == (set(), set())
        refused = executor.launch(_spec(3))
        assert refused.status == LaunchResult.capacity_rejected().status
        assert "at most 2 at once" in refused.message
        assert not (tmp_path / "started-3").exists() and len(executor.children) == 2
        release.touch()
        executor.wait_for_capacity(poll_seconds=0.01)  # returns once a child has exited
        assert executor.get_eligible_capacity({TaskType.CLIENT_APP}) == (
            {TaskType.CLIENT_APP}, set())
    finally:
        release.touch()
        executor.close(grace=5.0)
    assert not executor.children


def test_close_waits_for_its_children_and_kills_one_that_ignores_sigterm(
        tmp_path: Path) -> None:
    def polite(spec) -> int:  # noqa: ANN001 - ends on SIGTERM (Python's default: exit)
        (tmp_path / "polite").touch()
        time.sleep(60)
        return 0

    def stubborn(spec) -> int:  # noqa: ANN001
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (tmp_path / "stubborn").touch()
        time.sleep(60)
        return 0

    executor = ForkingExecutor(max_children=2, run_task=polite)
    executor.launch(_spec(1))
    executor._run_task = stubborn
    executor.launch(_spec(2))
    pids = set(executor.children)
    _wait(lambda: (tmp_path / "polite").exists() and (tmp_path / "stubborn").exists())
    started = time.monotonic()
    executor.close(grace=1.0)
    took = time.monotonic() - started
    assert not executor.children
    assert all(_reaped(pid) for pid in pids)  # waited for: no zombie, nothing left running
    assert 1.0 <= took < 10.0  # the stubborn one got the grace period, then SIGKILL


def test_only_clientapp_tasks_are_launched() -> None:
    executor = ForkingExecutor(run_task=lambda spec: 0)
    result = executor.launch(_spec(1, TaskType.SERVER_APP))
    assert result.status == LaunchResult.failed().status and not executor.children
    assert executor.get_eligible_capacity({TaskType.CLIENT_APP, TaskType.SERVER_APP}) == (
        {TaskType.CLIENT_APP}, set())
    with pytest.raises(ValueError, match="max_children"):
        ForkingExecutor(max_children=0)


def test_the_private_flower_pieces_it_uses_are_where_it_expects_them() -> None:
    """fedmirasol.engines.warm_clientapp uses private Flower modules (no public API runs a
    ClientApp task in-process); with flwr pinned exactly (test_lock), this fails on an
    upgrade that moves them."""
    import inspect

    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # noqa: F401
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor  # noqa: F401
    from flwr.supercore.retry import make_simple_http_retry_invoker  # noqa: F401
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin
    from flwr.supercore.tls import validate_and_resolve_root_certificates  # noqa: F401
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    assert {"runtime_api_address", "token", "insecure", "certificates", "parent_pid",
            "runtime_dependency_install"} <= set(inspect.signature(run_clientapp).parameters)
    assert {"runtime_api_address", "insecure", "root_certificates_path",
            "runtime_dependency_install", "executor"} <= set(
        inspect.signature(AutoExecPlugin).parameters)
    assert hasattr(RuntimeHttpClient, "from_server_address")
    assert hasattr(RuntimeHttpClient, "AcquireTask")
