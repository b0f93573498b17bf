"""The audit's statistics against independent computations: the one-run lower bound
(Steinke, Nasr, Jagielski 2023, Theorem 5.2) and the two-Gaussian estimate (Andrew et al.)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.optimize import brentq
from scipy.stats import norm

from fedmirasol.privacy.audit.gaussians import Gaussian, epsilon_of, estimate, hockey_stick
from fedmirasol.privacy.audit.one_run import (audit, count_correct, epsilon_lower_bound,
                                              guess_rules, p_value)


def theorem_p_value(epsilon: float, delta: float, m: int, r: int, v: int) -> float:
    """Theorem 5.2 written out term by term: f(u) = P[Binomial(r, e^eps/(1+e^eps)) >= u] as
    a plain sum, the max over every i = 1..m (f of a negative count is 1)."""
    q = math.exp(epsilon) / (1 + math.exp(epsilon))

    def f(u: int) -> float:
        if u <= 0:
            return 1.0
        return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(u, r + 1))

    worst = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    return min(1.0, f(v) + 2 * m * delta * worst)


@pytest.mark.parametrize("epsilon,delta,m,r,v", [
    (0.0, 0.0, 10, 10, 7), (0.5, 1e-5, 100, 40, 30), (1.3, 1e-5, 64, 20, 20),
    (2.0, 1e-3, 200, 100, 90), (0.2, 0.01, 50, 50, 31), (3.0, 1e-6, 1000, 300, 280),
])
def test_p_value_is_the_theorem(epsilon, delta, m, r, v) -> None:
    assert p_value(epsilon, delta, m, r, v) == pytest.approx(
        theorem_p_value(epsilon, delta, m, r, v), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("r", [5, 20, 64])
def test_all_correct_without_delta_is_the_closed_form(r) -> None:
    # P[all r right] = q^r <= alpha  <=>  eps >= logit(alpha^(1/r))
    alpha = 0.05
    closed = math.log(alpha ** (1 / r) / (1 - alpha ** (1 / r)))
    assert epsilon_lower_bound(0.0, r, r, r, alpha) == pytest.approx(closed, abs=1e-5)


@pytest.mark.parametrize("delta,m,r,v", [(1e-5, 64, 20, 20), (1e-5, 200, 100, 85),
                                         (1e-3, 100, 50, 45), (1e-5, 300, 150, 120)])
def test_lower_bound_matches_an_independent_root(delta, m, r, v) -> None:
    alpha = 0.05
    bound = epsilon_lower_bound(delta, m, r, v, alpha)
    assert bound > 0
    root = brentq(lambda e: theorem_p_value(e, delta, m, r, v) - alpha, 0.0, 20.0, xtol=1e-9)
    assert bound == pytest.approx(root, abs=1e-4)
    assert bound <= root + 1e-6  # never claims more than the theorem shows


def test_chance_level_guesses_refute_nothing() -> None:
    assert epsilon_lower_bound(1e-5, 100, 50, 25, 0.05) == 0.0
    assert epsilon_lower_bound(1e-5, 100, 50, 0, 0.05) == 0.0


@pytest.mark.parametrize("true_epsilon", [0.5, 1.0, 2.0])
def test_an_eps_dp_guesser_exceeds_eps_at_most_5_percent_of_the_time(true_epsilon) -> None:
    # The strongest eps-DP guesser is randomized response: each guess right with probability
    # e^eps / (1 + e^eps), so v ~ Binomial(r, q). The exact chance that the bound passes eps.
    r, m, alpha = 60, 120, 0.05
    q = math.exp(true_epsilon) / (1 + math.exp(true_epsilon))
    exceed = sum(math.comb(r, v) * q**v * (1 - q) ** (r - v) for v in range(r + 1)
                 if epsilon_lower_bound(1e-5, m, r, v, alpha) > true_epsilon)
    assert exceed <= alpha


def test_guesses_count_top_included_and_bottom_excluded() -> None:
    scores = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    bits = [True, False, True, False, False, True]
    assert count_correct(scores, bits, 2, 0).correct == 1
    assert count_correct(scores, bits, 2, 2).correct == 2  # 5 in; 1 out, 0 wrongly out
    # ties are broken by canary index, never by the secret bits
    tied = count_correct([1.0, 1.0, 1.0, 1.0], [False, True, False, True], 2, 0)
    assert tied.correct == 1


def test_audit_takes_the_best_rule_at_bonferroni_significance() -> None:
    rng = np.random.default_rng(0)
    bits = rng.random(200) < 0.5
    scores = bits * 3.0 + rng.standard_normal(200)
    result = audit(scores, bits, delta=1e-5, confidence=0.95)
    assert result.rules_tried == len(guess_rules(200))
    significance = 0.05 / result.rules_tried
    assert result.epsilon_lower_bound == pytest.approx(epsilon_lower_bound(
        1e-5, 200, result.guess.guesses, result.guess.correct, significance))
    assert result.epsilon_lower_bound > 1.0
    # shuffled bits carry no signal: nothing refuted
    assert audit(scores, rng.permutation(bits), delta=1e-5).epsilon_lower_bound < 0.5


def gaussian_mechanism_delta(mu: float, epsilon: float) -> float:
    """delta(eps) of N(mu, 1) against N(0, 1) (Balle and Wang 2018, Theorem 8)."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("mu,delta", [(0.5, 1e-5), (1.0, 1e-5), (2.0, 1e-3), (4.0, 1e-6)])
def test_equal_variances_are_the_gaussian_mechanism(mu, delta) -> None:
    eps = epsilon_of(Gaussian(mu, 1.0), Gaussian(0.0, 1.0), delta)
    assert gaussian_mechanism_delta(mu, eps) == pytest.approx(delta, rel=1e-5)
    # scale invariant
    assert epsilon_of(Gaussian(3 * mu + 7, 3.0), Gaussian(7.0, 3.0), delta) == \
        pytest.approx(eps, abs=1e-7)


@pytest.mark.parametrize("p,q,epsilon", [((1.0, 0.5), (0.0, 1.0), 0.7),
                                         ((0.0, 2.0), (0.5, 1.0), 1.5),
                                         ((2.0, 1.3), (0.0, 1.0), 0.0)])
def test_hockey_stick_matches_numerical_integration(p, q, epsilon) -> None:
    P, Q = Gaussian(*p), Gaussian(*q)

    def excess(x: float) -> float:
        return max(0.0, norm.pdf(x, *p) - math.exp(epsilon) * norm.pdf(x, *q))

    numeric, _ = integrate.quad(excess, -40, 40, limit=400, points=[p[0], q[0]])
    assert hockey_stick(P, Q, epsilon) == pytest.approx(numeric, abs=1e-7)


def test_estimate_of_identical_samples_is_zero_and_grows_with_separation() -> None:
    rng = np.random.default_rng(1)
    null = rng.standard_normal(500)
    # fitted standard deviations never agree exactly, and unequal variances leak in the
    # tails: at delta = 1e-5 the estimate of two halves of one sample is not 0
    assert estimate(null[:250], null[250:], 1e-5).epsilon < 1.0
    assert estimate(null[:250] + 3.0, null[250:], 1e-5).epsilon > 5.0
    assert estimate(null[:250] + 1e6, null[250:], 1e-5).epsilon == float("inf")
    with pytest.raises(ValueError, match="at least two"):
        estimate([1.0], [0.0, 1.0], 1e-5)
