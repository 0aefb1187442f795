"""The report's statistics: bootstrap intervals and paired differences, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from mimicshield.evaluation.statistics import (
    Estimate,
    bootstrap_mean,
    clustered_proportion,
    paired_difference,
    wilson_interval,
)


def test_the_interval_of_a_constant_is_a_point():
    assert bootstrap_mean([0.25] * 7) == Estimate(0.25, 0.25, 0.25, 7)
    assert bootstrap_mean([3.0]) == Estimate(3.0, 3.0, 3.0, 1)
    assert bootstrap_mean([]) is None


def test_the_paired_difference_of_identical_series_is_zero_with_zero_width():
    series = [0.1, 0.5, 0.9, 0.3]
    assert paired_difference(series, series) == Estimate(0.0, 0.0, 0.0, 4)


def test_paired_difference_skips_incomplete_pairs_and_resamples_pairs():
    difference = paired_difference([1.0, 2.0, None, 4.0], [0.5, 1.0, 1.0, float("nan")])
    assert difference.count == 2 and difference.mean == pytest.approx(0.75)
    assert difference.low == pytest.approx(0.5) and difference.high == pytest.approx(1.0)
    # A shared per-image offset cancels: the pairs differ by exactly 1 whatever the image.
    offsets = np.random.default_rng(0).normal(0, 10, 30)
    assert paired_difference(list(offsets + 1), list(offsets)) == Estimate(1.0, 1.0, 1.0, 30)
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1.0], [1.0, 2.0])


def test_seeded_intervals_are_reproducible_and_contain_the_mean():
    values = list(np.random.default_rng(3).exponential(size=20))
    first, again = bootstrap_mean(values), bootstrap_mean(values)
    assert first == again and first.low < first.mean < first.high
    assert bootstrap_mean(values, seed=1) != first


def test_95_percent_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials = 300
    covered = sum(
        (estimate := bootstrap_mean(list(rng.normal(2.0, 1.0, 40)), resamples=500, seed=trial)).low
        <= 2.0
        <= estimate.high
        for trial in range(trials)
    )
    # The percentile bootstrap under-covers slightly at n = 40 (≈ 93–94 %); 300 trials leave a
    # binomial spread of about ±1.3 %.
    assert 0.88 <= covered / trials <= 0.985
    assert not Estimate(1.0, 0.5, 1.5, 3).covers_zero and Estimate(0.1, -0.1, 0.3, 3).covers_zero


def test_fewer_than_the_minimum_images_never_claim_a_difference():
    few = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert not few.covers_zero and few.too_few and few.inconclusive
    enough = paired_difference([1.0, 2.0, 3.0, 2.0, 1.5], [0.0] * 5)
    assert not enough.too_few and not enough.inconclusive


def test_resampling_by_cluster_is_resampling_the_cluster_means():
    # Clusters of equal size: a resampled mean of values is the mean of the drawn clusters'
    # means, so the interval must be the plain bootstrap of the means with the same draws.
    rng = np.random.default_rng(1)
    means = rng.normal(0.0, 1.0, 8)
    values = np.repeat(means, 4) + rng.normal(0.0, 0.01, 32)
    clusters = np.repeat(np.arange(8), 4).tolist()
    clustered = bootstrap_mean(list(values), clusters=clusters)
    of_means = bootstrap_mean([values[i * 4 : i * 4 + 4].mean() for i in range(8)])
    assert clustered.mean == pytest.approx(of_means.mean)
    assert clustered.low == pytest.approx(of_means.low) and clustered.high == pytest.approx(
        of_means.high
    )
    assert (clustered.count, clustered.clusters) == (32, 8)
    # Resampling the 32 correlated values one by one pretends to 32 independent values.
    naive = bootstrap_mean(list(values))
    assert naive.high - naive.low < 0.6 * (clustered.high - clustered.low)
    # Without labels, every value is its own cluster.
    assert bootstrap_mean(list(values), clusters=list(range(32))).low == naive.low


def test_fewer_than_the_minimum_clusters_never_claim_a_difference():
    values, controls = [1.0, 1.2, 0.9, 1.1, 1.3, 0.8], [0.0] * 6
    by_seed = paired_difference(values, controls, clusters=[0, 0, 1, 1, 2, 2])
    assert by_seed.count == 6 and by_seed.clusters == 3 and by_seed.inconclusive
    assert not paired_difference(values, controls).inconclusive
    # Incomplete pairs are left out with their labels; one cluster left is a point.
    one = paired_difference([1.0, None, 2.0], [0.0, 0.0, 0.0], clusters=["a", "b", "a"])
    assert one == Estimate(1.5, 1.5, 1.5, 2, 1)
    with pytest.raises(ValueError, match="2 cluster labels"):
        paired_difference([1.0, 2.0, 3.0], [0.0] * 3, clusters=[0, 1])
    with pytest.raises(ValueError, match="clusters must label every value"):
        bootstrap_mean([1.0, 2.0], clusters=[0])


# ---------------------------------------------------------------- shares of two-choice answers


@pytest.mark.parametrize("successes, trials", [(0, 1), (1, 1), (0, 7), (3, 7), (8, 10), (55, 60)])
def test_the_wilson_interval_is_scipys(successes, trials):
    scipy_stats = pytest.importorskip("scipy.stats")
    reference = scipy_stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(successes, trials)
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert 0 <= low <= successes / trials <= high <= 1
    with pytest.raises(ValueError, match="3/2"):
        wilson_interval(3, 2)


def test_a_clustered_share_pools_answers_and_never_claims_more_than_wilson():
    counts = [(8, 10), (2, 10), (9, 10), (5, 10), (7, 12), (0, 0)]  # the last answered nothing
    share = clustered_proportion(counts)
    assert share.mean == pytest.approx(31 / 52) and share.count == 52 and share.participants == 5
    low, high = wilson_interval(31, 52)
    assert share.low <= low and high <= share.high and 0 <= share.low and share.high <= 1
    # Unanimous answers keep a width (the Wilson floor); a bootstrap alone would give [1, 1].
    unanimous = clustered_proportion([(10, 10)] * 6)
    assert unanimous.mean == unanimous.high == 1 and unanimous.low < 0.95
    assert not unanimous.inconclusive and clustered_proportion([(5, 5)] * 4).too_few
    assert clustered_proportion([]) is None and clustered_proportion([(0, 0)]) is None


def test_a_clustered_share_narrows_with_more_participants():
    counts = [(8, 10), (2, 10), (9, 10), (5, 10), (7, 10), (6, 10)]
    few, many = clustered_proportion(counts), clustered_proportion(counts * 4)
    assert few.mean == many.mean and few.low <= few.mean <= few.high
    assert many.high - many.low < few.high - few.low


def test_resampling_participants_covers_the_truth_when_participants_disagree():
    # Each of 20 people prefers option one with a probability of their own (uniform on [0, 1],
    # mean 1/2) and answers 20 trials: their answers are correlated. The Wilson interval, which
    # takes the 400 answers as independent, is far too narrow; resampling people is not.
    rng = np.random.default_rng(0)
    simulations, covered, covered_wilson = 200, 0, 0
    for simulation in range(simulations):
        chosen = rng.binomial(20, rng.uniform(size=20))
        share = clustered_proportion([(int(c), 20) for c in chosen], resamples=500, seed=simulation)
        low, high = wilson_interval(int(chosen.sum()), 400)
        covered += share.low <= 0.5 <= share.high
        covered_wilson += low <= 0.5 <= high
    assert 0.88 <= covered / simulations <= 0.99
    assert covered_wilson / simulations < 0.75
