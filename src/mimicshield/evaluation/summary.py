"""Aggregation of result rows: estimates per cell, comparisons with the noise control, pivots.

Every function here takes the rows as ``ResultsStore`` keeps them: dicts with the ``KEY_COLUMNS``
(method, purifier, scenario, variant, victim, baseline, image) and one number per measured
column. A value that is missing, ``None`` or not finite is left out. Units are those of the
metrics: PSNR in dB, SSIM, CLIP similarity and LPIPS without unit, FD in squared feature units,
latent shifts in scaled latent units (‖Δz‖) and [0, 1] pixel units (‖Δx‖), time in seconds,
memory in MiB.

Per-image values are summarised as a mean with a 95 % bootstrap interval over images
(``statistics.bootstrap_mean``); each method is compared with the noise control image by image
(``statistics.paired_difference``). Set metrics (FD) are one value per cell, on rows whose image
is ``*``, with a ``note`` where the set was too small for them.

Rows of the ``visibility`` scenario compare each protected image with its clean original; every
other row compares the mimicry of a protected image with the mimicry of the clean one (same
seed), under one of two baselines: ``purified-clean`` (the clean image under the same purifier;
what the protection adds, ``PRIMARY``) and ``clean`` (the unpurified clean image).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from .statistics import MIN_IMAGES, Estimate, bootstrap_mean, paired_difference

Rows = list[dict[str, object]]

#: The baseline the pivots, the comparison with noise and the worst case are based on.
PRIMARY = "purified-clean"
#: The method every other is compared with.
NOISE = "noise"
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
#: Set metrics: one value per cell, no interval.
SET_METRICS = ("fd_clip", "fid_inception")
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


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _estimate(values: Iterable[object]) -> Estimate | None:
    """Bootstrap mean of the finite numbers among ``values``; ``None`` where there are none."""
    return bootstrap_mean([n for n in map(_number, values) if n is not None])


def _mean(values: Iterable[object]) -> float | None:
    numbers = [n for n in map(_number, values) if n is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _visibility_rows(rows: Rows) -> Rows:
    return [row for row in rows if row["scenario"] == "visibility"]


def _mimicry_rows(rows: Rows, baseline: str = PRIMARY) -> Rows:
    """Mimicry rows of one baseline (rows without a baseline count as ``PRIMARY``)."""
    return [
        row
        for row in rows
        if row["scenario"] != "visibility" and row.get("baseline", PRIMARY) == baseline
    ]


def _in_order(values: Iterable[object]) -> list[str]:
    return [str(value) for value in dict.fromkeys(values)]


def victims(rows: Rows) -> list[str]:
    """The victims of the mimicry rows, in order of first row."""
    return _in_order(row.get("victim", "") for row in _mimicry_rows(rows))


def methods(rows: Rows) -> list[str]:
    """Methods in order of first row, the noise control last."""
    names = _in_order(row["method"] for row in rows)
    return [m for m in names if m != NOISE] + [m for m in names if m == NOISE]


def visibility_columns(rows: Rows) -> list[str]:
    """The ``VISIBILITY_COLUMNS`` that some visibility row holds, in that order."""
    present = {key for row in _visibility_rows(rows) for key in row}
    return [column for column in VISIBILITY_COLUMNS if column in present]


def visibility_estimates(rows: Rows) -> dict[str, dict[str, Estimate | None]]:
    """Method → column → estimate over the method's images of protected vs clean."""
    by_method: dict[str, Rows] = defaultdict(list)
    for row in _visibility_rows(rows):
        by_method[str(row["method"])].append(row)
    columns = visibility_columns(rows)
    return {
        method: {
            column: _estimate(row.get(column) for row in by_method[method]) for column in columns
        }
        for method in methods(_visibility_rows(rows))
    }


def protection_metrics(rows: Rows) -> list[str]:
    """The ``HIGHER_IS_WEAKER`` metrics that some mimicry row holds, in that order."""
    present = {key for row in _mimicry_rows(rows) for key in row}
    return [metric for metric in HIGHER_IS_WEAKER if metric in present]


def _cell_key(row: dict) -> tuple[str, str, str, str]:
    return (
        str(row["method"]),
        str(row["purifier"]),
        str(row["variant"]),
        str(row.get("victim", "")),
    )


def cell_estimates(rows: Rows, baseline: str = PRIMARY) -> dict[tuple, dict[str, object]]:
    """(method, purifier, variant, victim) → metric → ``{"estimate", "note"}``.

    Pair metrics: the bootstrap estimate over the cell's images. Set metrics: the ``*`` row's
    value as a zero-width estimate, or ``None`` with the row's note saying why it is missing.
    """
    grouped: dict[tuple, Rows] = defaultdict(list)
    for row in _mimicry_rows(rows, baseline):
        grouped[_cell_key(row)].append(row)
    cells = {}
    for key, group in grouped.items():
        images = [row for row in group if row["image"] != "*"]
        sets = [row for row in group if row["image"] == "*"]
        entry: dict[str, object] = {}
        for metric in HIGHER_IS_WEAKER:
            if metric in SET_METRICS:
                value = _number(sets[0].get(metric)) if sets else None
                note = sets[0].get("note") if sets and value is None else None
                point = Estimate(value, value, value, 1) if value is not None else None
                entry[metric] = {"estimate": point, "note": note}
            else:
                entry[metric] = {"estimate": _estimate(r.get(metric) for r in images), "note": None}
        cells[key] = entry
    return cells


def noise_differences(rows: Rows, baseline: str = PRIMARY) -> dict[tuple, dict[str, Estimate]]:
    """(method, purifier, variant, victim) → pair metric → paired difference method − noise.

    Paired by image: the same image, purifier, variant and victim under the noise control. Only
    methods other than noise, in cells where noise was measured too.
    """
    per_image: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in _mimicry_rows(rows, baseline):
        if row["image"] != "*":
            per_image[_cell_key(row)][str(row["image"])] = row
    differences = {}
    for key, images in per_image.items():
        method, purifier, variant, victim = key
        control = per_image.get((NOISE, purifier, variant, victim))
        if method == NOISE or control is None:
            continue
        shared = [image for image in images if image in control]
        differences[key] = {
            metric: estimate
            for metric in HIGHER_IS_WEAKER
            if metric not in SET_METRICS
            and (
                estimate := paired_difference(
                    [images[i].get(metric) for i in shared],
                    [control[i].get(metric) for i in shared],
                )
            )
            is not None
        }
    return differences


def pivot(
    rows: Rows,
    metric: str,
    victim: str,
    baseline: str = PRIMARY,
    purifiers: list[str] | None = None,
) -> dict[str, object]:
    """One metric as a table: methods as rows, (variant, purifier) as columns, for one victim.

    ``purifiers`` limits the columns to those purifiers (default: all).

    Returns:
        ``columns``: [(variant, purifier)], grouped by purifier; ``groups``: [(purifier, number
        of its columns)], for a header that spans them; ``rows``: per method
        (noise last) ``method`` and ``cells``, one per column, each ``None`` or a dict with
        ``estimate`` (Estimate or None), ``note``, ``ratio`` (mean / the noise control's mean, or
        None) and ``difference`` (paired difference with noise, or None) and ``like_noise``
        (True where that difference's interval covers 0).
    """
    cells = cell_estimates(rows, baseline)
    differences = noise_differences(rows, baseline)
    mine = [key for key in cells if key[3] == victim and key[1] in (purifiers or [key[1]])]
    # Grouped by purifier (in order of first row), then variants in order of first row.
    purifier_order = _in_order(key[1] for key in mine)
    variant_order = _in_order(key[2] for key in mine)
    columns = sorted(
        dict.fromkeys((key[2], key[1]) for key in mine),
        key=lambda column: (purifier_order.index(column[1]), variant_order.index(column[0])),
    )
    table = []
    for method in methods([{"method": key[0]} for key in mine]):
        line = []
        for variant, purifier in columns:
            key = (method, purifier, variant, victim)
            if key not in cells:
                line.append(None)
                continue
            entry = cells[key][metric]
            control = cells.get((NOISE, purifier, variant, victim), {}).get(metric, {})
            difference = differences.get(key, {}).get(metric)
            line.append(
                entry
                | {
                    "ratio": _ratio(entry["estimate"], control.get("estimate")),
                    "difference": difference,
                    "like_noise": difference is not None and difference.inconclusive,
                }
            )
        table.append({"method": method, "cells": line})
    groups = [
        (p, sum(1 for c in columns if c[1] == p)) for p in dict.fromkeys(c[1] for c in columns)
    ]
    return {"columns": columns, "groups": groups, "rows": table}


def _ratio(estimate: Estimate | None, control: Estimate | None) -> float | None:
    if estimate is None or control is None or control.mean == 0:
        return None
    return estimate.mean / control.mean


def like_noise_sentences(rows: Rows, baseline: str = PRIMARY) -> list[str]:
    """One sentence per method that is not distinguishable from noise in some cell.

    A cell counts where the 95 % interval of the paired difference with the noise control covers
    0, or where it rests on fewer than ``MIN_IMAGES`` images; the sentence lists those cells as
    ``metric at variant / purifier (victim)``.
    """
    found: dict[str, list[str]] = defaultdict(list)
    for (method, purifier, variant, victim), metrics in noise_differences(rows, baseline).items():
        for metric, difference in metrics.items():
            if difference.inconclusive:
                where = f"{metric} at {variant} / {purifier}" + (f" ({victim})" if victim else "")
                interval = f"[{difference.low:+.3g}, {difference.high:+.3g}]"
                few = f", only {difference.count} images" if difference.too_few else ""
                found[method].append(f"{where}: {difference.mean:+.3g} {interval}{few}")
    return [
        f"{method} is not distinguishable from the noise control (the 95 % interval of the "
        f"paired difference covers 0, or rests on fewer than {MIN_IMAGES} images) for "
        f"{'; '.join(cells)}."
        for method, cells in found.items()
    ]


def worst_case(rows: Rows) -> list[dict[str, object]]:
    """Per (method, variant, victim): each metric under the purifier that helped the imitator most.

    On the ``PRIMARY`` baseline (mimicry of the clean image under the same purifier), so a
    purifier's own damage does not count as protection. Helping the imitator means bringing the
    two mimicry outputs closest: the highest mean where ``HIGHER_IS_WEAKER`` says so (SSIM,
    PSNR, CLIP), the lowest otherwise (LPIPS, FD). Each metric is judged on its own, so two
    metrics may come from different purifiers; each names its purifier.

    Returns:
        One entry per (method, variant, victim) in order of first row, holding ``method``,
        ``variant``, ``victim`` and ``metrics``: each of ``protection_metrics(rows)`` → None or
        ``{"estimate", "purifier"}``.
    """
    chosen: dict[tuple, dict[str, dict | None]] = {}
    metrics = protection_metrics(rows)
    for (method, purifier, variant, victim), entry in cell_estimates(rows).items():
        current = chosen.setdefault((method, variant, victim), dict.fromkeys(metrics))
        for metric in metrics:
            estimate = entry[metric]["estimate"]
            if estimate is None:
                continue
            old = current[metric]
            pick = max if HIGHER_IS_WEAKER[metric] else min
            if old is None or pick(old["estimate"].mean, estimate.mean) != old["estimate"].mean:
                current[metric] = {"estimate": estimate, "purifier": purifier}
    return [
        {"method": method, "variant": variant, "victim": victim, "metrics": values}
        for (method, variant, victim), values in chosen.items()
    ]


def transfer_matrix(rows: Rows, metric: str) -> dict[str, object]:
    """Methods × (victim, variant) without purification: how protection transfers to victims.

    Returns:
        ``columns``: [(victim, variant)]; ``rows``: per method ``method`` and ``cells``, each
        ``None`` or ``{"estimate", "ratio"}`` (ratio to the noise control's mean there).
    """
    cells = cell_estimates(rows)
    keys = [key for key in cells if key[1] == "none"]
    columns = list(dict.fromkeys((key[3], key[2]) for key in keys))
    table = []
    for method in methods([{"method": key[0]} for key in keys]):
        line = []
        for victim, variant in columns:
            entry = cells.get((method, "none", variant, victim))
            control = cells.get((NOISE, "none", variant, victim))
            if entry is None:
                line.append(None)
                continue
            estimate = entry[metric]["estimate"]
            ratio = _ratio(estimate, control[metric]["estimate"] if control else None)
            line.append({"estimate": estimate, "ratio": ratio})
        table.append({"method": method, "cells": line})
    return {"columns": columns, "rows": table}


def set_notes(rows: Rows) -> list[str]:
    """The distinct reasons why set metrics (FD) are missing, as the grid recorded them."""
    return _in_order(
        row["note"] for row in _mimicry_rows(rows) if row["image"] == "*" and row.get("note")
    )


def sdedit_series(
    rows: Rows, victim: str | None = None
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Metric → method → (SDEdit strength, mean) points, unpurified cells of one victim.

    Only ``sdedit@<strength>`` variants count (the one-step variants are another curve); the
    victim defaults to the first one. Points are sorted by strength and methods by name; a
    metric or method without any value is absent.
    """
    victim = victim if victim is not None else next(iter(victims(rows)), "")
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for (method, purifier, variant, where), entry in cell_estimates(rows).items():
        if purifier != "none" or not variant.startswith("sdedit@") or where != victim:
            continue
        strength = float(variant.split("@")[1])
        for metric, value in entry.items():
            if value["estimate"] is not None:
                series[metric][method].append((strength, value["estimate"].mean))
    return {
        metric: {method: sorted(points) for method, points in sorted(lines.items())}
        for metric, lines in series.items()
    }


def method_summary(rows: Rows, variant: str) -> dict[str, dict[str, float | None]]:
    """Per method: mean visibility metrics and mean protection metrics of one variant (no purifier).

    Keys: ``visible_psnr`` (dB) and ``visible_ssim`` for protected vs clean, ``shift_ratio``
    (‖Δz‖∞/‖Δx‖∞, scaled latent units per [0, 1] pixel unit) and ``mimicry_psnr`` (dB) and
    ``mimicry_ssim`` for the mimicry of protected vs of clean; each ``None`` where unmeasured.
    """
    summary = {}
    for method in _in_order(row["method"] for row in _visibility_rows(rows)):
        visible = [row for row in _visibility_rows(rows) if row["method"] == method]
        mimicked = [
            row
            for row in _mimicry_rows(rows)
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
