"""Reading a `RunConfig`: TOML files, ``key=value`` overrides, Flower's flat run config, JSON.

Keys use dashes, the way Flower's run configs do; dotted paths (``strategy.name``) address a
section's key, so the same names work in ``--set``, in ``flwr run --run-config`` and in
pyproject's ``[tool.flwr.app.config]`` (which tests/test_config.py checks against the defaults).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from fedmirasol.config.base import config_error
from fedmirasol.config.model import ModelConfig
from fedmirasol.config.run import RunConfig
from fedmirasol.errors import ConfigError, UnknownKeyError, did_you_mean


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"a.b": value}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": value} -> nested tables."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {'.'.join(parents)!r} is a value, not a section")
        node[leaf] = value
    return nested


def to_table(config: RunConfig) -> dict[str, Any]:
    """The config as nested tables with dashed keys (TOML/JSON; the run directory's form)."""
    table = config.model_dump(by_alias=True, mode="json", exclude={"model"})
    return {**table, "model": config.model.table()}


def to_flat(config: RunConfig) -> dict[str, Any]:
    """The config as Flower's flat run config ({"section.key": value})."""
    return flatten(to_table(config))


DEFAULT_KEYS: tuple[str, ...] = tuple(flatten(to_table(RunConfig())))


def from_table(table: Mapping[str, Any]) -> RunConfig:
    """Validate nested tables (any subset of the keys; the rest take their defaults)."""
    for key in flatten(table):
        if not (key in DEFAULT_KEYS or key.startswith("model.")):
            raise unknown_key_error(key)
    values = dict(table)
    if "model" in values:
        if not isinstance(values["model"], Mapping):
            raise ConfigError("config key 'model' is a section: set model.name or a model field")
        try:
            values["model"] = ModelConfig.from_table(values["model"])
        except ValidationError as error:
            raise config_error(error, "model.") from None
    try:
        return RunConfig.model_validate(values)
    except ValidationError as error:
        raise config_error(error) from None


def unknown_key_error(key: str) -> UnknownKeyError:
    """The error for a key that is not in the config, with the closest known names."""
    sections = sorted({k.split(".", 1)[0] for k in DEFAULT_KEYS if "." in k})
    if "." not in key:
        if key in sections:  # `--set strategy=fedprox`: a section given a value
            example = next(k for k in DEFAULT_KEYS if k.startswith(f"{key}."))
            return UnknownKeyError(f"config key {key!r} is a section, not a value; set one of "
                                   f"its keys, e.g. {example!r}")
        top = [k for k in DEFAULT_KEYS if "." not in k]
        return UnknownKeyError(f"unknown config key {key!r}{did_you_mean(key, top + sections)}")
    section = key.split(".", 1)[0]
    if section not in sections:
        hint = did_you_mean(section, sections)
        return UnknownKeyError(f"unknown config section {section!r} in key {key!r}{hint}; "
                               f"sections are: {', '.join(sections)}")
    keys = [k for k in DEFAULT_KEYS if k.startswith(f"{section}.")]
    return UnknownKeyError(f"unknown config key {key!r}{did_you_mean(key, keys, f'{section}.')}")


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``key=value``; the value is read as a TOML value, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"simulation config {path} does not exist")
    with path.open("rb") as handle:
        try:
            return tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from error


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults <- TOML file (if any) <- ``key=value`` overrides, validated."""
    merged = flatten(read_toml(path)) if path is not None else {}
    for text in overrides:
        key, value = parse_assignment(text)
        merged[key] = value
    return from_table(unflatten(merged))


def with_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """A copy of `config` with dotted keys set (``{"privacy.enabled": True}``), validated."""
    return from_table(unflatten({**to_flat(config), **values}))


def from_flower_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Resolve a config from Flower's flat run config (``[tool.flwr.app.config]`` + overrides).

    ``config-file`` names a TOML file to start from; every other key that differs from the
    built-in default overrides that file.
    """
    flat = dict(run_config)
    path = flat.pop("config-file", "") or None
    defaults = to_flat(RunConfig())
    merged = flatten(read_toml(path)) if path else {}
    merged.update({k: v for k, v in flat.items() if defaults.get(k, None) != v})
    return from_table(unflatten(merged))


def to_json(config: RunConfig) -> str:
    return json.dumps(to_table(config), sort_keys=True)


def from_json(text: str) -> RunConfig:
    return from_table(json.loads(text))
