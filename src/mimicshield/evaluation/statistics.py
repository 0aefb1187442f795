"""Means with bootstrap intervals, and paired differences: pure functions on lists of numbers.

Every per-image table cell of the report is a mean over images with a 95 % percentile-bootstrap
interval (Efron & Tibshirani 1993, §13.3): the images are resampled with replacement
``RESAMPLES`` times, from a fixed seed so that a report is reproducible, and the interval is the
2.5th and 97.5th percentiles of the resampled means. A method is compared with the noise control
per image (same image, same seed, same purifier and mimicry), so the interval of the *paired*
difference is much narrower than two independent intervals would suggest.

Answers of the human study are choices between two alternatives, summarised as a proportion
with an interval that accounts for answers coming in clusters, one cluster per participant
(``clustered_proportion``).

Values that are not independent (the samples of one fine-tuned model share its training run) are
resampled by *cluster*: whole clusters are drawn with replacement and the resampled mean is the
mean of every value they hold (the cluster bootstrap; Davison & Hinkley 1997, §3.8), so the
interval reflects how much the clusters differ, not only how much their members do.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: Bootstrap resamples per interval: enough for the 2.5 % tails to move by well under a percent
#: of the interval's width from one seed to another.
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
#: Fewer images than this say nothing either way: a percentile-bootstrap interval over 1–4
#: values is far too narrow (zero-wide for one), so it would claim a difference it cannot show.
MIN_IMAGES = 5
#: The same for participants: a bootstrap over 1–4 people cannot see how much people differ.
MIN_PARTICIPANTS = 5


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


@dataclass(frozen=True)
class Proportion(Estimate):
    """A proportion (``mean``) of ``count`` answers given by ``participants`` people.

    The participants are the clusters resampled; ``low`` and ``high`` bound the proportion as
    ``clustered_proportion`` explains.
    """

    @property
    def participants(self) -> int:
        """How many people gave the ``count`` answers."""
        return self.clusters or 0

    @property
    def too_few(self) -> bool:
        """True below ``MIN_PARTICIPANTS`` participants, where the interval cannot be trusted."""
        return self.participants < MIN_PARTICIPANTS

    @property
    def covers_half(self) -> bool:
        """True when 1/2 lies in the interval: no evidence of a preference either way."""
        return self.low <= 0.5 <= self.high

    @property
    def inconclusive(self) -> bool:
        """No evidence of a preference: the interval covers 1/2, or too few participants."""
        return self.too_few or self.covers_half


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), within [0, 1].

    Unlike the normal approximation p ± z·√(p(1 − p)/n), it keeps a width when every trial
    agrees (0 or n successes) and never leaves [0, 1].

    Args:
        successes: how many of the trials succeeded, 0 ≤ successes ≤ trials.
        trials: independent trials, at least one.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        (low, high), which contain successes / trials.

    Examples:
        >>> [round(bound, 4) for bound in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 ≤ successes ≤ trials and trials ≥ 1, got {successes}/{trials}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    shrink = 1 + z**2 / trials
    centre = (share + z**2 / (2 * trials)) / shrink
    half = z * math.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2)) / shrink
    return max(0.0, min(centre - half, share)), min(1.0, max(centre + half, share))


def clustered_proportion(
    counts: Sequence[tuple[int, int]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Proportion | None:
    """The share of answers that chose something, with an interval resampling participants.

    One participant's answers are not independent: people differ in taste, eyesight, screen and
    attention, so someone who finds one method's grain ugly finds it so in every trial. Taken as
    independent, N answers from k people look like N draws when they carry the information of
    something between k and N, and a binomial interval comes out too narrow; the more people
    disagree, the worse. The cluster bootstrap (Davison & Hinkley 1997, §3.8) resamples
    *participants* with replacement, each with all their answers, and recomputes the pooled
    share (all chosen / all answered) ``resamples`` times; the 2.5th and 97.5th percentiles
    bound it. Between-participant disagreement thus widens the interval as it should.

    A percentile bootstrap has no floor, though: when every answer agrees it is a single point
    at 0 or 1, and over few participants it is too narrow. So the interval reported is the hull
    of the cluster-bootstrap interval and the Wilson score interval of all answers taken as
    independent (``wilson_interval``), the width that even perfectly consistent answers leave.

    Args:
        counts: per participant, (answers that chose it, answers); participants with no
            answers are left out.
        resamples: bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: of the resampling; same counts and seed → same interval.

    Returns:
        The pooled share with its interval, ``count`` the answers and ``participants`` the
        people; ``None`` when nobody answered.
    """
    answering = [(chosen, answered) for chosen, answered in counts if answered > 0]
    if not answering:
        return None
    if any(not 0 <= chosen <= answered for chosen, answered in answering):
        raise ValueError("each participant's chosen count must lie between 0 and their answers")
    # Each answer as 1 (chose it) or 0, labelled by its participant: the cluster bootstrap of
    # their mean is the pooled share with whole participants resampled.
    answers = [
        1.0 if i < chosen else 0.0 for chosen, answered in answering for i in range(answered)
    ]
    people = [person for person, (_, answered) in enumerate(answering) for _ in range(answered)]
    resampled = bootstrap_mean(
        answers, clusters=people, resamples=resamples, confidence=confidence, seed=seed
    )
    chosen_total = int(sum(answers))
    low, high = wilson_interval(chosen_total, len(answers), confidence)
    return Proportion(
        resampled.mean,
        min(low, resampled.low),
        max(high, resampled.high),
        len(answers),
        clusters=len(answering),
    )
