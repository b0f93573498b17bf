"""Seeds derived from the run's seed, so every process draws the same numbers."""

from __future__ import annotations

import numpy as np


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, round, client, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)
