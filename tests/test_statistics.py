"""The report's statistics: bootstrap intervals and paired differences, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from mimicshield.evaluation.statistics import Estimate, bootstrap_mean, paired_difference


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
