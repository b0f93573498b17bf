"""What a one-run audit could show at best about a clip counted twice: the audit's own bound
(`fedmirasol.privacy.audit.one_run`) on canary scores drawn from the mechanism itself, with a
perfect view of every canary, beside the accountant's epsilon.

Each canary is included with probability 1/2 and its score is what an auditor who sees each
canary's coordinate of every noised step (no other clip, no model) would compute, in units of
the clip norm C:
- ``full batch`` (sample rate 1, T steps): the sum of the T steps, s * T * [included] +
  N(0, sigma^2 T), the sufficient statistic (s = 1 correct, s = 2 each clip counted twice);
- ``subsampled`` (rate q, T = 1/q steps): the likelihood-ratio score of the per-step
  coordinates, sum_t log(1 - q + q exp((2 x_t - 2) / sigma^2)).
The accountant (Opacus RDP, delta 1e-5) is told sigma; the doubled clip is sigma / 2. Rules:
the audit's default grid (Bonferroni over its rules) and a single two-sided k = m / 64 fixed in
advance. Printed: mean and smallest bound over `--repeats` draws.

    python benchmarks/audit_ideal.py
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from opacus.accountants import RDPAccountant

from fedmirasol.privacy.audit.one_run import audit

DELTA = 1e-5


def accountant_epsilon(sigma: float, rate: float, steps: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(DELTA))


def scores(rng: np.random.Generator, included: np.ndarray, sigma: float, rate: float,
           steps: int, shift: float) -> np.ndarray:
    if rate == 1.0:
        return shift * steps * included + rng.normal(0, sigma * np.sqrt(steps), len(included))
    drawn = (rng.random((len(included), steps)) < rate) & included[:, None]
    seen = shift * drawn + rng.normal(0, sigma, drawn.shape)
    return np.log1p(rate * np.expm1(np.clip((2 * seen - 2) / sigma ** 2, -50, 50))).sum(1)


def bounds(rng: np.random.Generator, m: int, k: int, repeats: int, **mechanism: float
           ) -> np.ndarray:
    out = []
    for _ in range(repeats):
        included = rng.random(m) < 0.5
        out.append(audit(scores(rng, included, **mechanism), included, delta=DELTA,
                         k=k).epsilon_lower_bound)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--canaries", type=int, nargs="+",
                        default=[64, 256, 1024, 4096, 16384])
    args = parser.parse_args()
    rng = np.random.default_rng()
    regimes = [("full batch", 2.0, 1.0, 4), ("full batch", 4.0, 1.0, 1),
               ("subsampled", 1.5, 1 / 32, 32)]
    print("| regime | sigma | q | T | accountant epsilon | same at sigma / 2 | m | rule | "
          "bound, correct (mean / max) | bound, clip twice (mean / min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, sigma, rate, steps in regimes:
        told = accountant_epsilon(sigma, rate, steps)
        doubled = accountant_epsilon(sigma / 2, rate, steps)
        for m in args.canaries:
            for rule, k in (("grid", 0), (f"k = {m // 64}", m // 64)):
                if k == 0 and m > 4096 or k and m < 1024:
                    continue
                correct = bounds(rng, m, k, args.repeats, sigma=sigma, rate=rate,
                                 steps=steps, shift=1.0)
                twice = bounds(rng, m, k, args.repeats, sigma=sigma, rate=rate, steps=steps,
                               shift=2.0)
                print(f"| {name} | {sigma} | {rate:.4g} | {steps} | {told:.2f} | {doubled:.2f} "
                      f"| {m} | {rule} | {correct.mean():.2f} / {correct.max():.2f} | "
                      f"{twice.mean():.2f} / {twice.min():.2f} |", flush=True)


if __name__ == "__main__":
    main()
