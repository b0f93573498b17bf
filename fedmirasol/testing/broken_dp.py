"""DP-SGD broken on purpose, for the privacy audit's tests and benchmark only: the accountant
is told one mechanism and the training runs another. Each is a context manager that patches
`fedmirasol.privacy.dp_training.SecureDPOptimizer` (the optimizer every client's DP-SGD uses)
in this process and restores it on exit, so it reaches the clients of an in-process run
(`fedmirasol.testing.in_process`), not Ray workers."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from opacus.optimizers import DPOptimizer

from fedmirasol.privacy import dp_training


@contextlib.contextmanager
def _patched(name: str, replacement: Callable[[Callable[[DPOptimizer], None]],
                                              Callable[[DPOptimizer], None]]) -> Iterator[None]:
    cls = dp_training.SecureDPOptimizer
    had_own = name in vars(cls)
    original = getattr(cls, name)
    setattr(cls, name, replacement(original))
    try:
        yield
    finally:
        if had_own:
            setattr(cls, name, original)
        else:
            delattr(cls, name)


def _with_attribute(attribute: str, value: Callable[[float], float],
                    method: Callable[[DPOptimizer], None]) -> Callable[[DPOptimizer], None]:
    """`method` run with the optimizer's `attribute` changed by `value`, then put back."""

    def run(self: DPOptimizer) -> None:
        told = getattr(self, attribute)
        setattr(self, attribute, value(told))
        try:
            method(self)
        finally:
            setattr(self, attribute, told)

    return run


def weak_noise(factor: float = 1000.0) -> contextlib.AbstractContextManager[None]:
    """Noise `factor` times smaller than the noise multiplier the accountant is told."""
    return _patched("add_noise", lambda add: _with_attribute(
        "noise_multiplier", lambda told: told / factor, add))


def clipping_off() -> contextlib.AbstractContextManager[None]:
    """Per-sample gradients summed unclipped (the noise still scales with the told clip)."""
    return _patched("clip_and_accumulate", lambda clip: _with_attribute(
        "max_grad_norm", lambda told: 1e12, clip))


@contextlib.contextmanager
def each_clip_twice() -> Iterator[None]:
    """Every clip a Poisson batch draws is in it twice (its gradient counted twice: the
    sensitivity is 2 clip norms where the accountant assumes one)."""
    sampler = dp_training.SecurePoissonSampler
    draw = sampler.draw

    def doubled(self: dp_training.SecurePoissonSampler) -> list[int]:
        drawn = list(draw(self))
        return drawn + drawn

    sampler.draw = doubled  # type: ignore[method-assign]
    try:
        yield
    finally:
        sampler.draw = draw  # type: ignore[method-assign]


BREAKS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "noise / 1000": weak_noise, "clipping off": clipping_off, "each clip twice": each_clip_twice}
