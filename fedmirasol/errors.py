"""Errors that are the user's to fix (a config key, a flag, an input file), not the code's.

The `fedmirasol` command prints these as one line (`fedmirasol COMMAND: error: ...`, exit 2)
and shows a full traceback for anything else, so a programming error is never mistaken for a
bad setting. This module imports nothing from the project: every layer may raise them.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A config value, a command-line flag or the content of an input file is wrong; the
    message names the key (or flag, or file) and what would be accepted."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key (or section) that does not exist; a KeyError too, for callers that catch
    lookups. Its text is the message itself, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest candidate (difflib), else an empty string.

    With `prefix` (a section, e.g. ``"strategy."``), `word` and the candidates are compared
    without it, so a shared prefix does not make every key look close, and the suggestion is
    shown with it."""
    names = [c[len(prefix):] if prefix and c.startswith(prefix) else c for c in candidates]
    stem = word[len(prefix):] if prefix and word.startswith(prefix) else word
    close = difflib.get_close_matches(stem, names, n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""
