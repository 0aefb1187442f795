"""Means with bootstrap intervals, and paired differences: pure functions on lists of numbers.

Every per-image table cell of the report is a mean over images with a 95 % percentile-bootstrap
interval (Efron & Tibshirani 1993, §13.3): the images are resampled with replacement
``RESAMPLES`` times, from a fixed seed so that a report is reproducible, and the interval is the
2.5th and 97.5th percentiles of the resampled means. A method is compared with the noise control
per image (same image, same seed, same purifier and mimicry), so the interval of the *paired*
difference is much narrower than two independent intervals would suggest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    """A mean over ``count`` values and its bootstrap interval [low, high]."""

    mean: float
    low: float
    high: float
    count: int

    @property
    def covers_zero(self) -> bool:
        """True when 0 lies in the interval: no evidence that the mean differs from zero."""
        return self.low <= 0 <= self.high

    @property
    def too_few(self) -> bool:
        """True below ``MIN_IMAGES`` values, where the interval cannot be trusted."""
        return self.count < MIN_IMAGES

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
) -> Estimate | None:
    """The mean of ``values`` with its percentile-bootstrap interval.

    Args:
        values: finite numbers, one per image (any unit; the estimate has the same).
        resamples: bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: of the resampling; same values and seed → same interval.

    Returns:
        The estimate, a zero-width interval for a single value or a constant series; ``None``
        for no values.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_mean needs finite values; leave out the missing ones first")
    mean = float(data.mean())
    if data.size == 1 or np.ptp(data) == 0:
        return Estimate(mean, mean, mean, int(data.size))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    # The percentile interval of a skewed sample can miss the mean by round-off; keep it inside.
    return Estimate(mean, min(float(low), mean), max(float(high), mean), int(data.size))


def paired_difference(
    values: Sequence[float], controls: Sequence[float], **bootstrap: float
) -> Estimate | None:
    """Mean of ``values[i] − controls[i]`` with its bootstrap interval (images resampled as pairs).

    Args:
        values: one number per image; pairs where either value is missing (None or not
            finite) are left out.
        controls: the noise control's number for the same images, in the same order.
        bootstrap: ``resamples``, ``confidence``, ``seed`` as for ``bootstrap_mean``.

    Returns:
        The estimate of the mean difference, or ``None`` when no pair is complete.

    Raises:
        ValueError: the two series differ in length.
    """
    if len(values) != len(controls):
        raise ValueError(
            f"paired series must have one length, got {len(values)} and {len(controls)}"
        )
    differences = [
        float(value) - float(control)
        for value, control in zip(values, controls, strict=True)
        if _finite(value) and _finite(control)
    ]
    return bootstrap_mean(differences, **bootstrap)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
