"""The epsilon lower bound of a one-run audit (Steinke, Nasr, Jagielski 2023, "Privacy auditing
with one (1) training run", Theorem 5.2).

m canaries are each included with probability 1/2, independently; after training an auditor
guesses "included" for some canaries and "excluded" for others (r guesses in all, abstaining on
the rest) from the trained model alone, and v of the guesses are correct. If the training is
(epsilon, delta)-DP with respect to each canary, then

    P[v or more correct] <= f(v) + 2 m delta max_{i = 1..v} (f(v - i) - f(v)) / i,

where f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u]. A count v whose bound is at most the
significance level refutes (epsilon, delta)-DP at that confidence; the lower bound is the
largest epsilon below which every claim is refuted.

Guesses: the k highest-scoring canaries are guessed included and, two-sided, the k lowest
excluded. Trying several k multiplies the chances of a lucky count, so the significance is
divided among them (Bonferroni), which keeps the stated confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import expit
from scipy.stats import binom

# k tried when audit.guesses = 0 (each at most half the canaries), one-sided and two-sided.
GUESS_GRID = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000)
EPSILON_STEP = 0.01  # resolution of the scan for the first epsilon that is not refuted
EPSILON_CAP = 100.0


def p_value(epsilon: float, delta: float, canaries: int, guesses: int, correct: int) -> float:
    """The bound on P[>= `correct` of `guesses` right] under (epsilon, delta)-DP with respect
    to each of `canaries` canaries (Theorem 5.2)."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries "
                         f"({canaries})")
    if epsilon < 0 or not 0 <= delta < 1:
        raise ValueError(f"epsilon must be >= 0 and delta in [0, 1), got {epsilon}, {delta}")
    q = float(expit(epsilon))
    tail = float(binom.sf(correct - 1, guesses, q))  # f(v) = P[Bin(r, q) >= v]
    if delta == 0 or correct == 0:
        return tail
    shifts = np.arange(1, correct + 1)
    tails = binom.sf(correct - shifts - 1, guesses, q)  # f(v - i)
    worst = float(np.max((tails - tail) / shifts))
    return min(1.0, tail + 2 * canaries * delta * worst)


def epsilon_lower_bound(delta: float, canaries: int, guesses: int, correct: int,
                        significance: float) -> float:
    """The largest epsilon such that (e, delta)-DP is refuted at `significance` for every
    e below it (0 when even (0, delta) is not refuted). Refuting e refutes every smaller e
    too, so the bound holds whether or not the p-value grows monotonically with epsilon."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")

    def refuted(epsilon: float) -> bool:
        return p_value(epsilon, delta, canaries, guesses, correct) <= significance

    if not refuted(0.0):
        return 0.0
    low = 0.0  # refuted, and everything below it
    high = EPSILON_STEP
    while refuted(high):
        low, high = high, high + EPSILON_STEP * max(1.0, high)  # coarser steps further out
        if high > EPSILON_CAP:
            return EPSILON_CAP
    while high - low > 1e-6:
        middle = (low + high) / 2
        if refuted(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class Guess:
    """One guessing rule's outcome."""

    included: int  # k+: highest scores guessed "included"
    excluded: int  # k-: lowest scores guessed "excluded"
    correct: int  # v

    @property
    def guesses(self) -> int:
        return self.included + self.excluded


def count_correct(scores: Sequence[float], included: Sequence[bool], top: int,
                  bottom: int) -> Guess:
    """Guess the `top` highest scores included and the `bottom` lowest excluded; count the
    correct guesses. Ties are broken by canary index, never by the secret bits."""
    values = np.asarray(scores, dtype=np.float64)
    bits = np.asarray(included, dtype=bool)
    if values.shape != bits.shape or values.ndim != 1:
        raise ValueError("need one score and one inclusion bit per canary")
    if top + bottom > len(values):
        raise ValueError(f"{top} + {bottom} guesses for {len(values)} canaries")
    if not np.isfinite(values).all():
        raise ValueError("canary scores must be finite")
    order = np.lexsort((np.arange(len(values)), -values))  # highest first, then by index
    correct = int(bits[order[:top]].sum())
    if bottom:
        correct += int((~bits[order[len(values) - bottom:]]).sum())
    return Guess(top, bottom, correct)


@dataclass(frozen=True)
class OneRunAudit:
    """The audit's outcome: the lower bound and the guessing rule that gave it."""

    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int  # m
    guess: Guess  # the rule behind the bound (r = guess.guesses, v = guess.correct)
    rules_tried: int  # the significance was split among this many rules

    def to_json(self) -> dict[str, float | int]:
        return {"epsilon-lower-bound": self.epsilon_lower_bound, "delta": self.delta,
                "confidence": self.confidence, "m": self.canaries,
                "r": self.guess.guesses, "v": self.guess.correct,
                "guessed-included": self.guess.included,
                "guessed-excluded": self.guess.excluded, "rules-tried": self.rules_tried}


def guess_rules(canaries: int, k: int = 0) -> list[tuple[int, int]]:
    """(k+, k-) pairs: k given, guess k each way; k = 0, the grid one- and two-sided."""
    if k > 0:
        if 2 * k > canaries:
            raise ValueError(f"2 x {k} guesses for {canaries} canaries")
        return [(k, k)]
    sizes = [g for g in GUESS_GRID if 2 * g <= canaries] or [max(1, canaries // 2)]
    return [(g, 0) for g in sizes] + [(g, g) for g in sizes]


def audit(scores: Sequence[float], included: Sequence[bool], *, delta: float,
          confidence: float = 0.95, k: int = 0) -> OneRunAudit:
    """The one-run lower bound from the canaries' scores (higher: more likely included) and
    their secret inclusion bits, at `confidence` (Bonferroni over the rules tried)."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    m = len(scores)
    rules = guess_rules(m, k)
    significance = (1 - confidence) / len(rules)
    best: tuple[float, Guess] | None = None
    for top, bottom in rules:
        guess = count_correct(scores, included, top, bottom)
        bound = epsilon_lower_bound(delta, m, guess.guesses, guess.correct, significance)
        if best is None or bound > best[0]:
            best = (bound, guess)
    assert best is not None
    return OneRunAudit(best[0], delta, confidence, m, best[1], len(rules))


def best_possible(canaries: int, guesses: int, delta: float, confidence: float = 0.95,
                  rules: int = 1) -> float:
    """The bound if all `guesses` were right: the most an audit of this size can show."""
    return epsilon_lower_bound(delta, canaries, guesses, guesses, (1 - confidence) / rules)


__all__ = ["Guess", "OneRunAudit", "audit", "best_possible", "count_correct",
           "epsilon_lower_bound", "guess_rules", "p_value"]
