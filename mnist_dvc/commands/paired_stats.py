"""The paired comparison across seeds that review reports: the same seeds trained on both
sides, the mean of the per-seed differences with its 95 % interval (paired t), the paired
t-test's p, and the verdict rule.

Student's t distribution is computed here (the regularized incomplete beta function by its
continued fraction) so that review needs no scipy at run time; the tests hold it to
``scipy.stats``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # the interval's level: "better" or "worse" only when it excludes 0 ...
# ... by more than half a test image: counts of whole images make a plain t-test call a
# change slightly more often than its 5 % (5.2 % at N = 5 on the committed calibration; 4.1 %
# with this margin: docs/review-across-seeds.md)
MARGIN_IMAGES = 0.5
POWER = 0.8  # the chance of a real effect being seen, for the smallest effect a review sees


@dataclass(frozen=True)
class PairedTest:
    """Head minus base, seed by seed, in test images (accuracy difference x test images)."""

    differences: tuple[float, ...]
    mean: float
    sd: float  # of the differences
    ci95: tuple[float, float]
    p: float  # two-sided paired t-test of mean 0

    @property
    def improved(self) -> int:
        return sum(d > 0 for d in self.differences)

    @property
    def worsened(self) -> int:
        return sum(d < 0 for d in self.differences)

    @property
    def direction(self) -> str | None:
        """"better" or "worse" when the interval (in test images) clears 0 by more than
        ``MARGIN_IMAGES``; None when it does not."""
        low, high = self.ci95
        return "better" if low > MARGIN_IMAGES else "worse" if high < -MARGIN_IMAGES else None


def paired_test(base: Sequence[float], head: Sequence[float]) -> PairedTest:
    """The paired t-test of ``head - base`` (as ``scipy.stats.ttest_rel(head, base)``), with
    the confidence interval of the mean difference. With no spread in the differences, the
    interval is the point itself and p is 1 for a mean of 0 and 0 otherwise."""
    if len(base) != len(head) or len(base) < 2:
        raise ValueError(f"a paired test needs two or more pairs, not {len(base)} and "
                         f"{len(head)} values")
    differences = tuple(h - b for b, h in zip(base, head, strict=True))
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    if sd == 0:
        return PairedTest(differences, mean, 0.0, (mean, mean), 1.0 if mean == 0 else 0.0)
    error = sd / math.sqrt(n)
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, n - 1) * error
    p = 2 * t_cdf(-abs(mean) / error, n - 1)
    return PairedTest(differences, mean, sd, (mean - half, mean + half), min(1.0, p))


def smallest_visible_effect(sd_per_run: float, seeds: int) -> float:
    """The difference in images that ``seeds`` pairs detect with probability POWER at the
    interval's level, for runs whose results spread by ``sd_per_run`` images: the usual
    approximation (t_{1-alpha/2} + t_{power}) * sd_d / sqrt(n), where the difference of two
    independent runs spreads by sd_d = sqrt(2) * sd_per_run; plus the verdict's margin."""
    df = seeds - 1
    return MARGIN_IMAGES + (t_quantile(1 - (1 - CONFIDENCE) / 2, df) + t_quantile(POWER, df)) \
        * math.sqrt(2) * sd_per_run / math.sqrt(seeds)


def t_cdf(t: float, df: int) -> float:
    """P[T <= t] for Student's t with ``df`` degrees of freedom."""
    # both x and 1 - x from t: for small |t|, 1 - df / (df + t^2) would lose t
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t), t * t / (df + t * t))
    return tail if t < 0 else 1 - tail


@functools.lru_cache(maxsize=256)  # a review or a calibration asks for a few, many times
def t_quantile(q: float, df: int) -> float:
    """The t with ``t_cdf(t, df) == q``, by bisection (t_cdf is monotone)."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile needs 0 < q < 1, not {q}")
    low, high = -1.0, 1.0
    while t_cdf(low, df) > q:
        low *= 2
    while t_cdf(high, df) < q:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < q else (low, middle)
    return (low + high) / 2


def incomplete_beta(a: float, b: float, x: float, y: float) -> float:
    """The regularized incomplete beta function I_x(a, b), given x and y = 1 - x (each
    computed where it is accurate), by the continued fraction that converges fast on
    the side of x (Numerical Recipes, 6.4)."""
    if x <= 0 or y <= 0:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(y))
    if x < (a + 1) / (a + b + 2):
        return front * beta_fraction(a, b, x) / a
    return 1 - front * beta_fraction(b, a, y) / b


def beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by Lentz's method."""
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 4e-16:
            break
    return result
