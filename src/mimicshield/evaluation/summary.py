"""Aggregation of result rows: means per cell, the worst case over purifiers, series to plot.

Every function here takes the rows as ``ResultsStore`` keeps them: a list of dicts with the
``KEY_COLUMNS`` (method, purifier, scenario, variant, image) and one number per measured column.
A value that is missing, ``None`` or not finite is left out of a mean; a mean over nothing is
``None``. Units are those of the metrics: PSNR in dB, SSIM, CLIP similarity and LPIPS without
unit, FD in squared feature units, latent shifts in scaled latent units (‖Δz‖) and [0, 1] pixel
units (‖Δx‖), time in seconds, memory in MiB.

Rows of the ``visibility`` scenario compare each protected image with its clean original; every
other row compares the mimicry of a protected image with the mimicry of the clean one (same seed).
Set metrics (FD) sit on rows whose image is ``*``; pair metrics on rows named after the image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

Rows = list[dict[str, object]]
Means = dict[str, float | None]

#: For each protection metric, whether a higher value means the mimicry of the protected image is
#: *closer* to that of the clean image, i.e. the protection is weaker there.
HIGHER_IS_WEAKER = {
    "ssim": True,
    "psnr": True,
    "clip": True,
    "lpips": False,
    "fd_clip": False,
    "fid_inception": False,
}
#: The visibility columns shown, in this order, where any visibility row has them.
VISIBILITY_COLUMNS = (
    "psnr",
    "ssim",
    "lpips",
    "latent_shift_latent_linf",
    "latent_shift_pixel_linf",
    "latent_shift_ratio",
    "seconds",
    "peak_memory_mib",
)


def _mean(values: Iterable[object]) -> float | None:
    """Mean of the finite numbers among ``values``; ``None`` where there are none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers else None


def _visibility_rows(rows: Rows) -> Rows:
    return [row for row in rows if row["scenario"] == "visibility"]


def _mimicry_rows(rows: Rows) -> Rows:
    return [row for row in rows if row["scenario"] != "visibility"]


def visibility_columns(rows: Rows) -> list[str]:
    """The ``VISIBILITY_COLUMNS`` that some visibility row holds, in that order."""
    present = {key for row in _visibility_rows(rows) for key in row}
    return [column for column in VISIBILITY_COLUMNS if column in present]


def visibility_means(rows: Rows) -> dict[str, Means]:
    """Method → column → mean over the method's images of protected vs clean.

    The columns are ``visibility_columns(rows)``; methods come in the order of their first row.
    """
    by_method: dict[str, Rows] = defaultdict(list)
    for row in _visibility_rows(rows):
        by_method[str(row["method"])].append(row)
    columns = visibility_columns(rows)
    return {
        method: {column: _mean(row.get(column) for row in group) for column in columns}
        for method, group in by_method.items()
    }


def protection_metrics(rows: Rows) -> list[str]:
    """The ``HIGHER_IS_WEAKER`` metrics that some mimicry row holds, in that order."""
    present = {key for row in _mimicry_rows(rows) for key in row}
    return [metric for metric in HIGHER_IS_WEAKER if metric in present]


def cell_means(rows: Rows) -> list[dict[str, object]]:
    """One entry per (method, purifier, variant) of the mimicry rows, in order of first row.

    Each entry holds ``method``, ``purifier`` and ``variant`` (str) and ``means``: every
    ``HIGHER_IS_WEAKER`` metric → its mean over the cell's rows (pair metrics over the images,
    set metrics from the ``*`` row), ``None`` where the cell has no value.
    """
    grouped: dict[tuple[str, str, str], Rows] = defaultdict(list)
    for row in _mimicry_rows(rows):
        grouped[(str(row["method"]), str(row["purifier"]), str(row["variant"]))].append(row)
    return [
        {"method": method, "purifier": purifier, "variant": variant, "means": _means(group)}
        for (method, purifier, variant), group in grouped.items()
    ]


def _means(group: Rows) -> Means:
    """Every ``HIGHER_IS_WEAKER`` metric → its mean over ``group``."""
    return {metric: _mean(row.get(metric) for row in group) for metric in HIGHER_IS_WEAKER}


def worst_case(rows: Rows) -> list[dict[str, object]]:
    """Per (method, variant): each metric under the purifier that helped the imitator most.

    Helping the imitator means bringing the mimicry of the protected image closest to that of the
    clean one: the highest value where ``HIGHER_IS_WEAKER`` says so (SSIM, PSNR, CLIP), the
    lowest otherwise (LPIPS, FD). Each metric is judged on its own, so two metrics may come from
    different purifiers.

    Returns:
        One entry per (method, variant), in order of first row, holding ``method``, ``variant``
        and ``means``: each of ``protection_metrics(rows)`` → the worst-case cell mean, ``None``
        where no purifier has a value.
    """
    metrics = protection_metrics(rows)
    worst: dict[tuple[str, str], Means] = {}
    for cell in cell_means(rows):
        current = worst.setdefault((cell["method"], cell["variant"]), dict.fromkeys(metrics))
        for metric in metrics:
            value, old = cell["means"][metric], current[metric]
            if value is None:
                continue
            best_for_imitator = max if HIGHER_IS_WEAKER[metric] else min
            current[metric] = value if old is None else best_for_imitator(old, value)
    return [
        {"method": method, "variant": variant, "means": means}
        for (method, variant), means in worst.items()
    ]


def sdedit_series(rows: Rows) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Metric → method → (SDEdit strength, cell mean) points, unpurified cells only.

    Only ``sdedit@<strength>`` variants count (the one-step variants are another curve). Points
    are sorted by strength and methods by name; a metric or method without any value is absent.
    """
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for cell in cell_means(rows):
        if cell["purifier"] != "none" or not cell["variant"].startswith("sdedit@"):
            continue
        strength = float(cell["variant"].split("@")[1])
        for metric, value in cell["means"].items():
            if value is not None:
                series[metric][cell["method"]].append((strength, value))
    return {
        metric: {method: sorted(points) for method, points in sorted(lines.items())}
        for metric, lines in series.items()
    }


def method_summary(rows: Rows, variant: str) -> dict[str, Means]:
    """Per method: mean visibility metrics and mean protection metrics of one variant (no purifier).

    Keys: ``visible_psnr`` (dB) and ``visible_ssim`` for protected vs clean, ``shift_ratio``
    (‖Δz‖∞/‖Δx‖∞, scaled latent units per [0, 1] pixel unit) and ``mimicry_psnr`` (dB) and
    ``mimicry_ssim`` for the mimicry of protected vs of clean; each ``None`` where unmeasured.
    """
    summary: dict[str, Means] = {}
    for method in dict.fromkeys(row["method"] for row in _visibility_rows(rows)):
        visible = [row for row in _visibility_rows(rows) if row["method"] == method]
        mimicked = [
            row
            for row in rows
            if row["method"] == method
            and row["purifier"] == "none"
            and row["variant"] == variant
            and row["image"] != "*"
        ]
        summary[method] = {
            "visible_psnr": _mean(row.get("psnr") for row in visible),
            "visible_ssim": _mean(row.get("ssim") for row in visible),
            "shift_ratio": _mean(row.get("latent_shift_ratio") for row in visible),
            "mimicry_psnr": _mean(row.get("psnr") for row in mimicked),
            "mimicry_ssim": _mean(row.get("ssim") for row in mimicked),
        }
    return summary
