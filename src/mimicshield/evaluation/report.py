"""``report.html``: one page that a person can read, next to the images and plots it shows.

The page is ``templates/report.html.j2`` rendered with autoescaping, so names and notes from the
user can never become markup. It has no scripts and no external resources; images are referenced
relative to the report's folder (they live beside it), plots are written to ``plots/``. When the
folder holds a human-study page the report links to it, and folded answers (``human_answers``)
get a section of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import jinja2

from ..mimicry import SCENARIOS
from . import summary
from .human_answers import HumanResults
from .human_study import PAGE as STUDY_PAGE
from .plots import write_sdedit_plots
from .results import ResultsStore
from .statistics import MIN_PARTICIPANTS, Estimate

TEMPLATE = "report.html.j2"


def write_report(
    folder: Path,
    store: ResultsStore,
    *,
    title: str,
    notes: Iterable[str] = (),
    plan_json: str = "",
    max_images: int = 4,
    surrogate: str = "",
    human: HumanResults | None = None,
) -> Path:
    """Write ``folder/report.html`` (and ``folder/plots/*.png``) from the stored rows.

    ``surrogate`` names the model protection attacked, for the headings; ``human`` holds the
    folded answers of the human study, if any.
    """
    rows = store.rows
    victims = summary.victims(rows)
    metrics = summary.protection_metrics(rows)
    # 1. The plots, which the page links to.
    plots = write_sdedit_plots(folder, summary.sdedit_series(rows))
    # 2. The page: the aggregates as tables, then the plots, images and settings.
    purified = list(
        dict.fromkeys(
            row["purifier"]
            for row in rows
            if row["scenario"] != "visibility" and row["purifier"] != "none"
        )
    )
    page = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=title,
            notes=list(notes),
            surrogate=surrogate,
            visibility_columns=summary.visibility_columns(rows),
            visibility=summary.visibility_estimates(rows),
            metrics=metrics,
            victims=victims,
            pivots={
                baseline: {
                    victim: {
                        metric: summary.pivot(rows, metric, victim, baseline, purifiers)
                        for metric in metrics
                    }
                    for victim in victims
                }
                # Without a purifier the two baselines are the same: the second shows only the
                # purified columns.
                for baseline, purifiers in ((summary.PRIMARY, None), ("clean", purified))
                if purifiers != []
            },
            like_noise=summary.like_noise_sentences(rows),
            set_notes=summary.set_notes(rows),
            worst_case=summary.worst_case(rows) if purified else [],
            transfer={m: summary.transfer_matrix(rows, m) for m in metrics}
            if len(victims) > 1
            else {},
            plots=plots,
            images=_image_grid(folder, rows, max_images),
            plan_json=plan_json,
            study_page=STUDY_PAGE if (folder / STUDY_PAGE).is_file() else None,
            human=human,
            min_participants=MIN_PARTICIPANTS,
        )
    )
    path = folder / "report.html"
    path.write_text(page)
    return path


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment, built on first use (importing the module reads no file)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("mimicshield.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _format_number
    environment.filters["interval"] = _format_interval
    environment.filters["share"] = _format_share
    return environment


def _format_number(value: float | None) -> str:
    """Four significant digits; a dash where nothing was measured."""
    return "–" if value is None else f"{value:.4g}"


def _format_share(share: Estimate | None) -> str:
    """A share of answers as a percentage with its interval; a dash where none answered."""
    if share is None:
        return "–"
    return f"{share.mean:.0%} [{share.low:.0%}, {share.high:.0%}]"


def _format_interval(estimate: Estimate | None) -> str:
    """``[low, high]`` of a bootstrap estimate, three significant digits; empty for a point."""
    if estimate is None or estimate.low == estimate.high:
        return ""
    return f"[{estimate.low:.3g}, {estimate.high:.3g}]"


def _image_grid(folder: Path, rows: list[dict], max_images: int) -> list[dict[str, object]]:
    """The thumbnails to show for the first ``max_images`` images.

    Returns:
        Per image: ``name``, ``variants`` (the per-image mimicry variants, unpurified, of the
        first victim) and
        ``lines``, one per method with ``method`` and ``thumbs``: clean | protected | mimicry of
        clean per variant | mimicry of protected per variant, each a path relative to ``folder``,
        or ``None`` where that file does not exist (the page never points at a missing file).
    """
    visible = [row for row in rows if row["scenario"] == "visibility"]
    methods = summary.methods(visible)
    images = list(dict.fromkeys(row["image"] for row in visible))
    victim = next(iter(summary.victims(rows)), "")
    # Set scenarios (textual inversion, LoRA, DreamBooth) generate new images rather than one
    # per input: not part of this grid.
    per_image = {name for name, scenario in SCENARIOS.items() if scenario.per_image}
    variants = list(
        dict.fromkeys(
            row["variant"]
            for row in rows
            if row["scenario"] in per_image and row["purifier"] == "none"
        )
    )
    grid = []
    for image in images[:max_images]:
        clean = [f"mimicry/{victim}/clean/none/{variant}/{image}.png" for variant in variants]
        lines = []
        for method in methods:
            protected = [
                f"mimicry/{victim}/{method}/none/{variant}/{image}.png" for variant in variants
            ]
            paths = [f"clean/{image}.png", f"protected/{method}/{image}.png", *clean, *protected]
            thumbs = [path if (folder / path).is_file() else None for path in paths]
            lines.append({"method": method, "thumbs": thumbs})
        grid.append({"name": image, "variants": variants, "lines": lines})
    return grid
