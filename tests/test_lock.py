"""requirements.lock pins the whole environment that pyproject.toml resolves to, and they agree."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def read_lock(path: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LOCK_LINE.match(line)
        assert match, f"requirements.lock:{number}: not an exact 'name==version' pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock:{number}: {match[1]} pinned twice"
        pins[name] = match[2]
    return pins


def project_requirements(extras: tuple[str, ...] = ("test",)) -> list[Requirement]:
    """The project's requirements with `extras`; an extra that names the project's own extras
    (`fedmirasol[tracking]`) brings in theirs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def test_lock_pins_every_project_requirement_within_its_range() -> None:
    pins = read_lock()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject requires {requirement} but requirements.lock has no {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {requirement}")


def test_torch_pair_is_pinned_exactly_in_pyproject() -> None:
    exact = {canonicalize_name(r.name): str(r.specifier) for r in project_requirements(())}
    for name in ("torch", "torchaudio", "flwr"):
        assert re.fullmatch(r"==\d+(\.\d+)+", exact[name]), (
            f"{name} must be pinned to one exact version in pyproject.toml, not {exact[name]!r}")
    pins = read_lock()
    assert exact["torch"] == f"=={pins['torch']}" and exact["torchaudio"] == f"=={pins['torchaudio']}"


def _closure(requirements: list[Requirement], extras: set[str]) -> dict[str, str]:
    """Installed versions of every distribution the requirements pull in, transitively."""
    environment = default_environment()
    seen: dict[str, str] = {}
    pending = [(r, extras) for r in requirements]
    while pending:
        requirement, active = pending.pop()
        if requirement.marker and not any(
                requirement.marker.evaluate({**environment, "extra": extra})
                for extra in (active or {""})):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} is required but not installed")
        seen[name] = distribution.version
        for text in distribution.requires or ():
            pending.append((Requirement(text), set(requirement.extras)))
    return seen


def test_installed_environment_is_the_lock() -> None:
    """The environment pip resolved (README: `pip install -e '.[test]' -c requirements.lock`)
    holds exactly the locked versions, and the lock misses none of its packages."""
    pins = read_lock()
    installed = _closure(project_requirements(), {"test"})
    missing = sorted(set(installed) - set(pins))
    assert not missing, f"installed but not in requirements.lock (run .ci/lock): {missing}"
    differ = {n: (v, pins[n]) for n, v in installed.items()
              if v.split("+")[0] != pins[n].split("+")[0]}
    assert not differ, f"installed vs locked versions differ (installed, locked): {differ}"
