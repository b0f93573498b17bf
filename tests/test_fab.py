"""The FAB `flwr run` builds from this project holds the two entry points and the app config,
not the library, docs, benchmarks or tests (every ServerApp and ClientApp task unpacks it, and
each site runs the fedmirasol it installed)."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"server/server_app.py", "server/__init__.py",
                "clients/client_app.py", "clients/__init__.py"}


def _fab() -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT)))


def test_fab_holds_the_entry_points_and_the_app_config_only() -> None:
    fab = _fab()
    names = set(fab.namelist())
    assert names == ENTRY_POINTS | {"pyproject.toml", ".info/CONTENT"}
    for folder in ("fedmirasol/", "docs/", "benchmarks/", "tests/", "simulations/"):
        assert not any(name.startswith(folder) for name in names), folder
    # the entry points are this checkout's files, byte for byte
    for name in ENTRY_POINTS:
        assert fab.read(name) == (ROOT / name).read_bytes(), name


def test_fab_pyproject_carries_the_components_and_every_run_config_key() -> None:
    packed = tomllib.loads(_fab().read("pyproject.toml").decode())["tool"]["flwr"]["app"]
    with (ROOT / "pyproject.toml").open("rb") as handle:
        source = tomllib.load(handle)["tool"]["flwr"]["app"]
    components = packed["components"]
    assert components == {"serverapp": "server.server_app:app",
                          "clientapp": "clients.client_app:app"}
    assert {module.split(":")[0].replace(".", "/") + ".py"
            for module in components.values()} <= ENTRY_POINTS
    assert packed["config"] == source["config"]
