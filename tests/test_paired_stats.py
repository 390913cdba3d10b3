"""mnist_dvc.commands.paired_stats: Student's t and the paired test, held to scipy.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mnist_dvc.commands import paired_stats

DEGREES = [1, 2, 3, 4, 5, 9, 19, 49, 200]


@pytest.mark.parametrize("df", DEGREES)
def test_t_cdf_equals_scipy(df):
    for t in (-60.0, -7.5, -2.776, -1.0, -0.2, 0.0, 0.3, 1.5, 2.1, 9.0, 80.0):
        expected = stats.t.cdf(t, df)
        tail = min(expected, 1 - expected)  # compare the smaller tail relatively
        got = paired_stats.t_cdf(t, df)
        assert min(got, 1 - got) == pytest.approx(tail, rel=1e-9, abs=1e-300), t


@pytest.mark.parametrize("df", DEGREES)
def test_t_quantile_equals_scipy(df):
    for q in (0.001, 0.025, 0.2, 0.8, 0.9, 0.975, 0.999):
        assert paired_stats.t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)


def per_seed_errors(rng: np.random.Generator, seeds: int, shift: float) -> tuple[list, list]:
    """Test errors of two sides over ``seeds`` seeds, as review reports them (whole images)."""
    base = rng.normal(65, 4, seeds).round()
    return list(base), list((base + rng.normal(-shift, 5.5, seeds)).round())


@pytest.mark.parametrize("seeds", [2, 3, 5, 8, 20])
@pytest.mark.parametrize("case", range(6))
def test_the_paired_test_equals_scipy_ttest_rel(seeds, case):
    rng = np.random.default_rng(100 * seeds + case)
    base, head = per_seed_errors(rng, seeds, shift=3.0 * case)
    result = paired_stats.paired_test(base, head)
    reference = stats.ttest_rel(head, base)
    interval = reference.confidence_interval(paired_stats.CONFIDENCE)
    assert result.mean == pytest.approx(np.mean(np.subtract(head, base)), abs=1e-12)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.ci95 == pytest.approx((interval.low, interval.high), rel=1e-9)
    # the verdict's rule: the interval clears 0 by more than the margin (so p < 0.05 too)
    low, high = interval.low, interval.high
    margin = paired_stats.MARGIN_IMAGES
    assert (result.direction is not None) == (low > margin or high < -margin)
    assert result.direction is None or reference.pvalue < 0.05


def test_an_interval_within_half_an_image_of_zero_calls_nothing():
    barely = paired_stats.paired_test([10, 20, 30], [10.5, 20.6, 30.7])  # +0.6 +- 0.25
    assert barely.ci95[0] > 0 and barely.ci95[0] < paired_stats.MARGIN_IMAGES
    assert barely.p < 0.05 and barely.direction is None


def test_direction_follows_the_sign_and_counts_follow_the_seeds():
    better = paired_stats.paired_test([60, 62, 65, 61], [50, 53, 55, 52])
    assert better.direction == "worse"  # fewer of these numbers: they are not the images right
    assert (better.improved, better.worsened) == (0, 4)
    right = paired_stats.paired_test([9940, 9938, 9935], [9946, 9943, 9941])
    assert right.direction == "better" and right.improved == 3


def test_identical_sides_give_zero_and_no_direction():
    same = paired_stats.paired_test([9937, 9935, 9940], [9937, 9935, 9940])
    assert (same.mean, same.sd, same.ci95, same.p) == (0.0, 0.0, (0.0, 0.0), 1.0)
    assert same.direction is None and same.improved == same.worsened == 0
    constant = paired_stats.paired_test([1, 2, 3], [4, 5, 6])  # no spread, not zero
    assert constant.ci95 == (3.0, 3.0) and constant.p == 0.0 and constant.direction == "better"


@pytest.mark.parametrize("values", [([1.0], [2.0]), ([1.0, 2.0], [1.0])])
def test_too_few_or_unmatched_pairs_are_refused(values):
    with pytest.raises(ValueError, match="two or more pairs"):
        paired_stats.paired_test(*values)


def test_the_smallest_visible_effect_is_seen_at_the_stated_power():
    """Simulated runs spreading by 4 images: a change of the stated size is called in its
    direction about POWER of the time (the formula is an approximation: within 5 points)."""
    rng = np.random.default_rng(0)
    for seeds in (3, 5, 10):
        effect = paired_stats.smallest_visible_effect(4.0, seeds)
        trials = 4000
        base = rng.normal(0, 4, (trials, seeds))
        head = rng.normal(effect, 4, (trials, seeds))
        seen = np.mean([paired_stats.paired_test(list(b), list(h)).direction == "better"
                        for b, h in zip(base, head, strict=True)])
        assert abs(seen - paired_stats.POWER) < 0.05, (seeds, seen)
    assert paired_stats.smallest_visible_effect(4.0, 5) < \
        paired_stats.smallest_visible_effect(4.0, 3)
