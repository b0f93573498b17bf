"""TRANSITIONAL facade over `fedmirasol.config` (the typed RunConfig) for code that has not
moved to it yet; removed when nothing imports it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from fedmirasol.config import load as _load
from fedmirasol.config.load import flatten, parse_assignment, unflatten  # noqa: F401
from fedmirasol.config.privacy import ACCOUNTANTS, GRAD_SAMPLE_MODES
from fedmirasol.config.run import RunConfig
from fedmirasol.config.secagg import WEIGHTINGS
from fedmirasol.config.sections import (  # noqa: F401
    CLIENT_LEVEL_STRATEGIES, OPTIMIZERS, PARTITIONERS, SECAGG_STRATEGIES, SOURCES, STRATEGIES,
)
from fedmirasol.errors import ConfigError
from fedmirasol.models.config import MirasolConfig

if TYPE_CHECKING:
    from torch import nn

    from fedmirasol.core.parameters import ParameterSplit

Config = RunConfig
DEFAULTS: dict[str, Any] = _load.to_table(RunConfig())
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": SOURCES, "data.partitioner": PARTITIONERS, "client.optimizer": OPTIMIZERS,
    "strategy.name": STRATEGIES, "privacy.accountant": ACCOUNTANTS,
    "privacy.grad-sample-mode": GRAD_SAMPLE_MODES, "secagg.weighting": WEIGHTINGS,
}


def check_value(key: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of `default`, or raise naming `key`."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return value


def _resolved(config: RunConfig) -> RunConfig:
    from fedmirasol.pretrained.checkpoint import with_digest

    return with_digest(config)


def validate(config: Mapping[str, Any] | RunConfig) -> RunConfig:
    """A validated RunConfig (defaults filled in, the pretrained checkpoint's digest set)."""
    if not isinstance(config, RunConfig):
        config = _load.from_table(config)
    return _resolved(config)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    return _resolved(_load.load_config(path, overrides))


def from_flower_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    return _resolved(_load.from_flower_run_config(run_config))


def model_config(config: RunConfig) -> MirasolConfig:
    return config.model.mirasol


def local_spec(config: RunConfig) -> str:
    return config.local_selectors()


def parameter_split(model: nn.Module, config: RunConfig) -> ParameterSplit:
    """The run's ParameterSplit of `model`: `local_spec` stays local, `pretrained.freeze` is
    neither shared nor local."""
    from fedmirasol.core.parameters import ParameterSplit
    from fedmirasol.pretrained.checkpoint import PretrainedSettings

    frozen = PretrainedSettings.from_config(config).frozen_names(model)
    return ParameterSplit.from_model(model, local_spec(config), frozen)


def parse_ids(text: str) -> set[int]:
    """'1, 4,7' -> {1, 4, 7}; raises naming the bad item."""
    ids: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.lstrip("-").isdigit():
            raise ConfigError(f"{item!r} is not a client (partition) id")
        ids.add(int(item))
    return ids


def to_json(config: RunConfig) -> str:
    return _load.to_json(config)


def from_json(text: str) -> RunConfig:
    return _resolved(_load.from_json(text))
