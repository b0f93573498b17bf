"""DP-SGD noise for the next step, drawn on a worker thread while this step's forward and
backward run.

Drawing the Gaussian noise takes a fixed time a step whatever the batch (2.1 M draws for
Mirasol small: about 8 ms from torch's generator, about 0.12 s from the CSPRNG), and nothing in
it depends on the data. Torch's and numpy's draws release the GIL, so the worker draws the
next step's noise on another core while the main thread computes the per-sample gradients.

What is released does not change:

- each step's noise is drawn once and lent once, to one call (`lend`); the next step's is
  drawn only after that call has returned (into the same tensors where the draw can, so no
  memory is allocated a step), so no draw is ever used twice;
- draws never overlap: `take` waits for the pending draw before drawing itself, so a
  dedicated seeded generator yields exactly the sequence a synchronous optimizer would draw;
- a draw made for other settings (the noise std or a parameter's shape changed in between) is
  discarded, never released, and the step's noise drawn afresh;
- `close` stops a pending draw (between two tensors) and discards it.

Memory: one step's noise (one copy of the noised parameters) is held between steps.

The generator must serve the noise only: the worker uses it while the main thread trains.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Sequence

import torch

# The noise of one entry of a step's spec (e.g. std, shape, dtype, device): drawn into the given
# tensor (the entry's previous noise, already used) where it can, else into a new one.
DrawOne = Callable[[Hashable, "torch.Tensor | None"], torch.Tensor]
Noise = list[torch.Tensor]


class Cancelled(Exception):
    """A pending draw was stopped by `NoiseAhead.close`."""


class NoiseAhead:
    """Lends each step's noise (one tensor per spec entry) to one call, then draws the next
    step's on one worker thread."""

    def __init__(self, draw_one: DrawOne, *, in_place: bool = True) -> None:
        """`in_place`: hand the used tensors back to `draw_one` (False: it always draws new
        ones, and the used ones are let go at once)."""
        self._draw_one = draw_one
        self._in_place = in_place
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[Hashable, ...], Future[Noise]] | None = None
        self._stop = threading.Event()

    def _draw(self, spec: tuple[Hashable, ...], used: Noise | None,
              stop: threading.Event | None) -> Noise:
        noise = []
        for index, entry in enumerate(spec):
            if stop is not None and stop.is_set():
                raise Cancelled
            noise.append(self._draw_one(entry, None if used is None else used[index]))
        return noise

    def _settle(self) -> tuple[tuple[Hashable, ...], Noise] | None:
        """The pending draw once finished (None if there was none or it was stopped)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        spec, future = pending
        try:
            return spec, future.result()
        except Cancelled:
            return None

    def lend(self, spec: Sequence[Hashable], use: Callable[[Noise], None]) -> None:
        """Call `use` with this step's noise, one tensor per entry of `spec` (drawn ahead if
        the previous step had the same spec), then start drawing the next step's into the
        same tensors. `use` must not keep them."""
        spec = tuple(spec)
        settled = self._settle()  # also: no two draws at once on the generator
        noise = settled[1] if settled is not None and settled[0] == spec else None
        del settled  # a draw for other settings is dropped here, unreleased
        if noise is None:
            noise = self._draw(spec, None, None)
        use(noise)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dp-noise")
        self._stop = threading.Event()
        used = noise if self._in_place else None
        del noise
        self._pending = (spec, self._executor.submit(self._draw, spec, used, self._stop))

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
