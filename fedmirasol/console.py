"""The library's messages to the person running it go through `logging` (logger "fedmirasol");
the entry points (the CLI, the Flower apps) show INFO and above on stdout, message only."""

from __future__ import annotations

import logging
import sys

LOGGER = "fedmirasol"


def show_messages(level: int = logging.INFO) -> None:
    """Print the "fedmirasol" logger's messages on stdout (once per process)."""
    logger = logging.getLogger(LOGGER)
    if any(getattr(h, "fedmirasol_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.fedmirasol_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
