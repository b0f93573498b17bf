"""The base of every config section: frozen, strict, dashed keys, errors that name the key."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fedmirasol.errors import ConfigError, did_you_mean


def dashed(name: str) -> str:
    """A field name as a config key: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def partition_ids(text: str, key: str) -> set[int]:
    """Comma-separated partition ids ('1, 4,7' -> {1, 4, 7}); an item that is not an id is a
    ConfigError naming `key`."""
    ids: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.lstrip("-").isdigit():
            raise ConfigError(f"config key {key!r}: {item!r} is not a client (partition) id")
        ids.add(int(item))
    return ids


class Section(BaseModel):
    """One table of the run config (``[client]``, ``[privacy]``, ...).

    Frozen (hashable, so a config can key a cache), strict (``"2"`` is not an integer, ``1``
    is not ``true``), closed (an unknown key is an error), keys with dashes as in Flower's run
    configs. Checks that involve one section live in its class; checks across sections live in
    `fedmirasol.config.run.RunConfig`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              alias_generator=dashed, populate_by_name=True)

    def table(self) -> dict[str, Any]:
        """The section as a TOML/JSON table with dashed keys."""
        return self.model_dump(by_alias=True, mode="json")


_TYPE_WORDS = {"bool_type": "true or false", "int_type": "an integer", "float_type": "a number",
               "string_type": "a string", "literal_error": "one of", "tuple_type": "a list"}


def config_error(error: ValidationError, prefix: str = "") -> ConfigError:
    """Pydantic's errors as one ConfigError whose lines each name the dotted key."""
    lines = []
    for item in error.errors(include_url=False):
        key = prefix + ".".join(str(part) for part in item["loc"])
        kind = item["type"]
        if kind == "value_error":  # a check of ours: its message already names the key
            lines.append(str(item["ctx"]["error"]))
        elif kind == "extra_forbidden":
            lines.append(f"unknown config key {key!r}")
        elif kind == "literal_error":
            choices = re.findall(r"'([^']*)'", item["ctx"]["expected"])
            lines.append(f"config key {key!r} must be one of {tuple(choices)}, got "
                         f"{item['input']!r}{did_you_mean(str(item['input']), choices)}")
        elif kind in _TYPE_WORDS:
            lines.append(f"config key {key!r} must be {_TYPE_WORDS[kind]}, got {item['input']!r}")
        else:
            lines.append(f"config key {key!r}: {item['msg']}, got {item['input']!r}")
    return ConfigError("; ".join(dict.fromkeys(lines)))
