"""A whole deployment on one machine: a SuperLink and SuperNodes as separate processes on
loopback, with TLS and SuperNode authentication (the integration tests drive it).

Every process runs in its own session and is killed, with its children (SuperExec,
ServerApp, ClientApp processes), by `close()`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import psutil

from fedmirasol.deploy.certs import Credentials, make_credentials

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the Flower app (pyproject.toml)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    """A console script of this environment (flower-superlink, flwr, ...)."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def node_config_arg(values: Mapping[str, Any]) -> str:
    """{"partition-id": 0, "state-dir": "/x"} -> 'partition-id=0 state-dir="/x"'."""
    def toml(value: Any) -> str:
        return json.dumps(value) if isinstance(value, (str, bool)) else str(value)

    return " ".join(f"{key}={toml(value)}" for key, value in values.items())


def _kill_tree(root: int) -> None:
    """SIGKILL `root`, its descendants (psutil) and their process groups."""
    try:
        parent = psutil.Process(root)
        found = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    groups = set()
    for process in found:
        try:
            groups.add(os.getpgid(process.pid))
        except ProcessLookupError:
            pass
    for group in groups - {os.getpgid(0)}:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in found:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@dataclass
class Loopback:
    """One SuperLink on `port` and SuperNodes 0..n-1, all under `root`."""

    root: Path
    nodes: int = 3
    port: int = field(default_factory=free_port)
    database: bool = True  # a persistent SuperLink database (root/superlink.db)
    # "subprocess": Flower's default, a flwr-clientapp process per message; "process": each
    # SuperNode's ClientApps run from its own warm `fedmirasol clientapp-server`
    isolation: str = "subprocess"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.root / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)
        self.creds: Credentials = make_credentials(self.root / "certs", nodes=self.nodes + 1)
        (self.flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.creds.ca_cert}"\n')
        # Flower starts its own tools (flower-superexec, flwr-serverapp, ...) from PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # Flower's telemetry opt-out: with no route out (CI), every Flower process (each
        # ClientApp task's included) would wait 4 s at exit for its telemetry event.
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", "PATH": path, "FLWR_TELEMETRY_ENABLED": "0"}
        self.node_ports = {i: free_port() for i in range(self.nodes + 1)}

    # -- processes -----------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and everything it started. Flower detaches some children
        (SuperExec, ServerApp) into sessions of their own, so the process tree is walked
        first and every process group in it is killed."""
        for key in (f"{name}-clientapps", name):
            proc = self.procs.pop(key, None)
            if proc is not None:
                _kill_tree(proc.pid)
                proc.wait(timeout=30)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> "Loopback":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SuperLink -------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 120.0) -> None:
        args = [_tool("flower-superlink"), "--ssl-ca-certfile", str(self.creds.ca_cert),
                "--ssl-certfile", str(self.creds.server_cert),
                "--ssl-keyfile", str(self.creds.server_key), "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port)]
        if self.database:
            args += ["--database", str(self.root / "superlink.db")]
        offset = len(self.log("superlink"))  # a restart appends to the same log
        proc = self._start("superlink", args)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("the SuperLink exited:\n" + self.log("superlink")[-2000:])
            return "Uvicorn running" in self.log("superlink")[offset:]

        self.wait_for(up, timeout, "the SuperLink to start")

    def flwr(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
        return subprocess.run([_tool("flwr"), *args], env=self.env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def flwr_json(self, *args: str, timeout: float = 180.0) -> dict[str, Any]:
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        text = done.stdout
        start = text.find("{")
        if done.returncode != 0 or start < 0 or not json.loads(text[start:]).get("success"):
            raise RuntimeError(f"flwr {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stdout}\n{done.stderr}")
        return json.loads(text[start:])

    def register(self, i: int) -> int:
        """Register SuperNode i's public key; its node id."""
        _, public = self.creds.node_keys[i]
        return int(self.flwr_json("supernode", "register", str(public))["node-id"])

    # -- SuperNodes ------------------------------------------------------------------------
    def start_supernode(self, i: int, node_config: Mapping[str, Any], *, name: str | None = None,
                        insecure: bool = False, max_retries: int | None = None
                        ) -> subprocess.Popen:
        private, _ = self.creds.node_keys[i]
        if not insecure:  # its SuperNode key is also its secure-aggregation identity
            node_config = {"secagg-key": str(private),
                           "secagg-registry": str(self.creds.registry), **node_config}
        args = [_tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(self.node_ports[i]), "--node-config", node_config_arg(node_config)]
        args += (["--insecure"] if insecure else
                 ["--root-certificates", str(self.creds.ca_cert),
                  "--auth-supernode-private-key", str(private)])
        if max_retries is not None:
            args += ["--max-retries", str(max_retries)]
        name = name or f"node{i}"
        if self.isolation == "process":
            args += ["--isolation", "process", "--host", "127.0.0.1"]
            self._start(f"{name}-clientapps", [
                _tool("fedmirasol"), "clientapp-server", "--insecure",
                "--runtime-api-address", f"127.0.0.1:{self.node_ports[i]}"])
        return self._start(name, args)

    def restart_supernode(self, i: int, node_config: Mapping[str, Any],
                          timeout: float = 300.0) -> subprocess.Popen:
        """Kill SuperNode i and start it again. The SuperLink refuses to activate a node id
        it still counts as online (until two missed heartbeats, about 60 s), and the
        SuperNode then exits: start it again until it connects."""
        name = f"node{i}"
        self.kill(name)
        deadline = time.monotonic() + timeout
        while True:
            offset = len(self.log(name))
            proc = self.start_supernode(i, node_config)
            while proc.poll() is None and "SuperNode ID" not in self.log(name)[offset:]:
                time.sleep(1.0)
            if proc.poll() is None:
                return proc
            self.kill(name)  # and the SuperExec it left behind
            if time.monotonic() > deadline:
                raise TimeoutError(f"SuperNode {i} did not reconnect within {timeout:.0f} s")
            time.sleep(5.0)

    # -- runs ------------------------------------------------------------------------------
    def run(self, run_config: Mapping[str, Any]) -> int:
        """`flwr run` the project with `run_config` overrides; the run id."""
        overrides = node_config_arg(run_config)
        return int(self.flwr_json("run", str(PROJECT_ROOT), "loopback",
                                  "--run-config", overrides)["run-id"])

    def run_status(self, run_id: int) -> str:
        runs = self.flwr_json("ls", "--run-id", str(run_id))["runs"]
        return str(runs[0]["status"]) if runs else ""

    @staticmethod
    def wait_for(condition: Any, timeout: float, what: str, every: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)
