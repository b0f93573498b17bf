"""The run config's ``[model]`` section: a named Mirasol / late-fusion config plus overrides."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Mapping

from pydantic import model_validator

from fedmirasol.config.base import Section, dashed
from fedmirasol.errors import ConfigError, UnknownKeyError, did_you_mean
from fedmirasol.models.config import NAMED_CONFIGS, MirasolConfig, get_config

# Every MirasolConfig field is a `model.<field>` key (dashed), e.g. model.num-frames = 8.
MODEL_FIELDS = {dashed(f.name): f.name for f in dataclasses.fields(MirasolConfig)}


class ModelConfig(Section):
    """``model.name`` (a named config) and any MirasolConfig field as an override."""

    name: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()  # (dashed field, value), sorted by field

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "ModelConfig":
        values = dict(table)
        name = values.pop("name", "tiny")
        for key in values:
            if key not in MODEL_FIELDS:
                hint = did_you_mean(f"model.{key}", (f"model.{k}" for k in MODEL_FIELDS),
                                    "model.")
                raise UnknownKeyError(f"unknown config key 'model.{key}'{hint}; model fields "
                                      f"are: {', '.join(sorted(MODEL_FIELDS))}")
        frozen = tuple(sorted((k, _hashable(v)) for k, v in values.items()))
        return cls(name=name, overrides=frozen)

    def table(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self.overrides}}

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.name not in NAMED_CONFIGS:
            hint = did_you_mean(self.name, NAMED_CONFIGS)
            raise ConfigError(f"config key 'model.name' must be one of {tuple(NAMED_CONFIGS)}, "
                              f"got {self.name!r}{hint}")
        self.mirasol  # raises, naming the field, if the overrides do not make a valid model
        return self

    @property
    def mirasol(self) -> MirasolConfig:
        """The MirasolConfig this section describes."""
        return _mirasol(self.name, self.overrides)


@lru_cache(maxsize=64)
def _mirasol(name: str, overrides: tuple[tuple[str, Any], ...]) -> MirasolConfig:
    merged = get_config(name).to_dict() | {MODEL_FIELDS[k]: _plain(v) for k, v in overrides}
    try:
        return MirasolConfig.from_dict(merged)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"invalid model config in run config: {error}") from error


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value
