"""Means with bootstrap intervals, and paired differences: pure functions on lists of numbers.

Every per-image table cell of the report is a mean over images with a 95 % percentile-bootstrap
interval (Efron & Tibshirani 1993, §13.3): the images are resampled with replacement
``RESAMPLES`` times, from a fixed seed so that a report is reproducible, and the interval is the
2.5th and 97.5th percentiles of the resampled means. A method is compared with the noise control
per image (same image, same seed, same purifier and mimicry), so the interval of the *paired*
difference is much narrower than two independent intervals would suggest.

Values that are not independent (the samples of one fine-tuned model share its training run) are
resampled by *cluster*: whole clusters are drawn with replacement and the resampled mean is the
mean of every value they hold (the cluster bootstrap; Davison & Hinkley 1997, §3.8), so the
interval reflects how much the clusters differ, not only how much their members do.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples per interval: enough for the 2.5 % tails to move by well under a percent
#: of the interval's width from one seed to another.
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
#: Fewer images than this say nothing either way: a percentile-bootstrap interval over 1–4
#: values is far too narrow (zero-wide for one), so it would claim a difference it cannot show.
MIN_IMAGES = 5


@dataclass(frozen=True)
class Estimate:
    """A mean over ``count`` values and its bootstrap interval [low, high].

    ``clusters`` is how many clusters were resampled when values were resampled by cluster
    (None: each value on its own).
    """

    mean: float
    low: float
    high: float
    count: int
    clusters: int | None = None

    @property
    def covers_zero(self) -> bool:
        """True when 0 lies in the interval: no evidence that the mean differs from zero."""
        return self.low <= 0 <= self.high

    @property
    def too_few(self) -> bool:
        """True below ``MIN_IMAGES`` resampled units (values or clusters): no trusted interval."""
        return (self.count if self.clusters is None else self.clusters) < MIN_IMAGES

    @property
    def inconclusive(self) -> bool:
        """No evidence of a difference from zero: the interval covers 0, or too few values."""
        return self.too_few or self.covers_zero


def bootstrap_mean(
    values: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    clusters: Sequence[Hashable] | None = None,
) -> Estimate | None:
    """The mean of ``values`` with its percentile-bootstrap interval.

    Args:
        values: finite numbers, one per image (any unit; the estimate has the same).
        resamples: bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: of the resampling; same values and seed → same interval.
        clusters: one label per value; values with one label are resampled together (e.g. the
            training seed of each sample). None resamples each value on its own.

    Returns:
        The estimate, a zero-width interval for a single value or a constant series; ``None``
        for no values.

    Raises:
        ValueError: a value is not finite, or ``clusters`` has another length than ``values``.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_mean needs finite values; leave out the missing ones first")
    if clusters is not None and len(clusters) != data.size:
        raise ValueError(
            f"clusters must label every value, got {len(clusters)} labels for {data.size} values"
        )
    # Each cluster's sum and size; without labels, every value is a cluster of one.
    labels = range(data.size) if clusters is None else clusters
    index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    members = np.array([index[label] for label in labels])
    sums = np.bincount(members, weights=data)
    sizes = np.bincount(members).astype(np.float64)
    count = None if clusters is None else len(index)

    mean = float(data.mean())
    if len(index) == 1 or np.ptp(data) == 0:
        return Estimate(mean, mean, mean, int(data.size), count)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(index), size=(resamples, len(index)))
    means = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    # The percentile interval of a skewed sample can miss the mean by round-off; keep it inside.
    return Estimate(mean, min(float(low), mean), max(float(high), mean), int(data.size), count)


def paired_difference(
    values: Sequence[float],
    controls: Sequence[float],
    *,
    clusters: Sequence[Hashable] | None = None,
    **bootstrap: float,
) -> Estimate | None:
    """Mean of ``values[i] − controls[i]`` with its bootstrap interval (images resampled as pairs).

    Args:
        values: one number per image; pairs where either value is missing (None or not
            finite) are left out.
        controls: the noise control's number for the same images, in the same order.
        clusters: one label per pair, resampled together as for ``bootstrap_mean``; or None.
        bootstrap: ``resamples``, ``confidence``, ``seed`` as for ``bootstrap_mean``.

    Returns:
        The estimate of the mean difference, or ``None`` when no pair is complete.

    Raises:
        ValueError: the series (and labels) differ in length.
    """
    labels = range(len(values)) if clusters is None else clusters
    if not len(values) == len(controls) == len(labels):
        raise ValueError(
            f"paired series must have one length, got {len(values)} and {len(controls)}"
            + ("" if clusters is None else f" and {len(clusters)} cluster labels")
        )
    complete = [
        (float(value) - float(control), label)
        for value, control, label in zip(values, controls, labels, strict=True)
        if _finite(value) and _finite(control)
    ]
    differences = [difference for difference, _ in complete]
    kept = None if clusters is None else [label for _, label in complete]
    return bootstrap_mean(differences, clusters=kept, **bootstrap)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
