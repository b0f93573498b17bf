"""DP-SGD noise for the next step, drawn on a worker thread while this step's forward and
backward run.

Drawing the Gaussian noise takes a fixed time a step whatever the batch (2.1 M draws for
Mirasol small: about 8 ms from torch's generator, about 0.12 s from the CSPRNG), and nothing in
it depends on the data. Torch's and numpy's draws release the GIL, so the worker draws the
next step's noise on another core while the main thread computes the per-sample gradients.

What is released does not change:

- every noise tensor is drawn once, handed out once and then forgotten (`take` drops its
  reference); the noise of a step is drawn after the previous step's was taken, never reused;
- draws never overlap: `take` waits for the pending draw before drawing itself, so a
  dedicated seeded generator yields exactly the sequence a synchronous optimizer would draw;
- a draw made for other settings (the noise std or a parameter's shape changed in between) is
  discarded, never released, and the step's noise drawn afresh;
- `close` stops a pending draw (between two tensors) and discards it.

The generator must serve the noise only: the worker uses it while the main thread trains.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Sequence

import torch

# One noise tensor for one entry of a step's spec (e.g. std, shape, dtype, device).
DrawOne = Callable[[Hashable], torch.Tensor]


class Cancelled(Exception):
    """A pending draw was stopped by `NoiseAhead.close`."""


class NoiseAhead:
    """Hands out the noise of each step (one tensor per spec entry) and starts drawing the
    next step's right away, on one worker thread."""

    def __init__(self, draw_one: DrawOne) -> None:
        self._draw_one = draw_one
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[Hashable, ...], Future[list[torch.Tensor]]] | None = None
        self._stop = threading.Event()

    def _draw(self, spec: tuple[Hashable, ...], stop: threading.Event | None) -> list[torch.Tensor]:
        noise = []
        for entry in spec:
            if stop is not None and stop.is_set():
                raise Cancelled
            noise.append(self._draw_one(entry))
        return noise

    def _settle(self) -> tuple[tuple[Hashable, ...], list[torch.Tensor]] | None:
        """The pending draw once finished (None if there was none or it was stopped)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        spec, future = pending
        try:
            return spec, future.result()
        except Cancelled:
            return None

    def take(self, spec: Sequence[Hashable]) -> list[torch.Tensor]:
        """This step's noise, one tensor per entry of `spec` (drawn ahead if the previous call
        asked for the same spec), and start drawing the next step's."""
        spec = tuple(spec)
        settled = self._settle()  # also: no two draws at once on the generator
        noise = settled[1] if settled is not None and settled[0] == spec else None
        del settled  # a draw for other settings is dropped here, unreleased
        if noise is None:
            noise = self._draw(spec, None)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dp-noise")
        self._stop = threading.Event()
        self._pending = (spec, self._executor.submit(self._draw, spec, self._stop))
        return noise

    def wait(self) -> None:
        """Block until the pending draw (the next step's noise) is finished; it stays pending."""
        if self._pending is not None:
            try:
                self._pending[1].result()
            except Cancelled:
                pass

    def close(self) -> None:
        """Stop and discard the pending draw; end the worker thread."""
        self._stop.set()
        self._settle()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
