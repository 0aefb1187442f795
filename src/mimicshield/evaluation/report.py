"""``report.html``: one page that a person can read, next to the images and plots it shows.

The page has no scripts and no external resources; images are referenced relative to the
report's folder (they live beside it), plots are written to ``plots/`` by matplotlib.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .results import ResultsStore

#: For each metric, whether a higher value means the mimicry of the protected image is *closer*
#: to that of the clean image, i.e. the protection is weaker there.
HIGHER_IS_WEAKER = {
    "ssim": True,
    "psnr": True,
    "clip": True,
    "lpips": False,
    "fd_clip": False,
    "fid_inception": False,
}
VISIBILITY_COLUMNS = (
    "psnr",
    "ssim",
    "lpips",
    "latent_shift_z_linf",
    "latent_shift_x_linf",
    "latent_shift_ratio",
    "seconds",
    "peak_memory_mib",
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.name { text-align: left; }
img.thumb { width: 128px; image-rendering: pixelated; }
.note { background: #fff6d6; padding: 0.6em 1em; border-left: 4px solid #e0b000; }
"""


def write_report(
    folder: Path,
    store: ResultsStore,
    *,
    title: str,
    notes: Iterable[str] = (),
    plan_json: str = "",
    max_images: int = 4,
) -> Path:
    """Write ``folder/report.html`` (and ``folder/plots/*.png``) from the stored rows."""
    rows = store.rows
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        *(f'<p class="note">{html.escape(note)}</p>' for note in notes),
        _HOW_TO_READ,
        "<h2>Visibility of the perturbation (protected vs clean)</h2>",
        _visibility_table(rows),
        "<h2>Protection (mimicry of protected vs mimicry of clean, same seed)</h2>",
        _protection_table(rows),
        "<h2>Worst case over purifiers</h2>",
        "<p>For each method and mimicry variant, the value under the purifier that helped the "
        "imitator most (for SSIM, PSNR and CLIP the highest, for LPIPS and FD the lowest).</p>",
        _worst_case_table(rows),
        "<h2>Metrics against SDEdit strength (no purification)</h2>",
        _plots(folder, rows),
        "<h2>Images</h2>",
        _image_grid(folder, rows, max_images),
        "<h2>Settings</h2>",
        f"<pre>{html.escape(plan_json)}</pre>",
    ]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    path = folder / "report.html"
    path.write_text(page)
    return path


_HOW_TO_READ = """
<p><b>How to read this.</b> The first table says how visible each protection is: PSNR (dB,
higher = less visible) and SSIM (1 = identical) of the protected file against the original, and
how far the encoder's latent moved (‖Δz‖∞) per unit of pixel change (‖Δx‖∞): the paper's point is
that this ratio is large. The second table says how well each protection works: it compares what
the imitator gets from the protected image with what they get from the clean one, with the same
random seed, so every difference comes from the protection. There, <i>lower</i> SSIM, PSNR and
CLIP similarity and <i>higher</i> LPIPS and FD mean <i>stronger</i> protection. The
<code>noise</code> row, if present, is random noise of the same budget: a protection is only worth
its name where it beats that row. Purifiers (JPEG, blur, ...) are what an imitator may apply
first; the worst-case table keeps, for each method, the purifier that undid it most.</p>
"""


def _mean(values: Iterable[object]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers else None


def _format(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    lines = []
    for line in body:
        cells = [f'<td class="name">{html.escape(line[0])}</td>']
        cells += [f"<td>{html.escape(cell)}</td>" for cell in line[1:]]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _visibility_table(rows: list[dict]) -> str:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["scenario"] == "visibility":
            by_method[row["method"]].append(row)
    columns = [c for c in VISIBILITY_COLUMNS if any(c in r for g in by_method.values() for r in g)]
    body = [
        [method] + [_format(_mean(r.get(c) for r in group)) for c in columns]
        for method, group in by_method.items()
    ]
    return _table(["method", *columns], body)


def _protection_metrics(rows: list[dict]) -> list[str]:
    present = {key for row in rows if row["scenario"] != "visibility" for key in row}
    return [metric for metric in HIGHER_IS_WEAKER if metric in present]


def _cells(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float | None]]:
    """(method, purifier, variant) → metric → mean over images (set metrics from the * row)."""
    grouped: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["scenario"] != "visibility":
            grouped[(row["method"], row["purifier"], row["variant"])].append(row)
    return {
        cell: {metric: _mean(r.get(metric) for r in group) for metric in HIGHER_IS_WEAKER}
        for cell, group in grouped.items()
    }


def _protection_table(rows: list[dict]) -> str:
    metrics = _protection_metrics(rows)
    body = [
        [method, purifier, variant] + [_format(values[m]) for m in metrics]
        for (method, purifier, variant), values in _cells(rows).items()
    ]
    return _table(["method", "purifier", "variant", *metrics], body)


def _worst_case_table(rows: list[dict]) -> str:
    metrics = _protection_metrics(rows)
    worst: dict[tuple[str, str], dict[str, float | None]] = {}
    for (method, _, variant), values in _cells(rows).items():
        current = worst.setdefault((method, variant), dict.fromkeys(metrics))
        for metric in metrics:
            value = values[metric]
            if value is None:
                continue
            best_for_imitator = max if HIGHER_IS_WEAKER[metric] else min
            old = current[metric]
            current[metric] = value if old is None else best_for_imitator(old, value)
    body = [
        [method, variant] + [_format(values[m]) for m in metrics]
        for (method, variant), values in worst.items()
    ]
    return _table(["method", "variant", *metrics], body)


def _plots(folder: Path, rows: list[dict]) -> str:
    """One PNG per metric: mean value against SDEdit strength, a line per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for (method, purifier, variant), values in _cells(rows).items():
        if purifier != "none" or not variant.startswith("sdedit@"):
            continue
        strength = float(variant.split("@")[1])
        for metric, value in values.items():
            if value is not None:
                series[metric][method].append((strength, value))
    if not series:
        return "<p>No SDEdit results to plot.</p>"
    (folder / "plots").mkdir(exist_ok=True)
    figures = []
    for metric, lines in series.items():
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for method, points in sorted(lines.items()):
            points.sort()
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axes.set_xlabel("SDEdit strength")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric}: mimicry of protected vs of clean")
        axes.legend(fontsize="small")
        figure.tight_layout()
        name = f"plots/{metric}.png"
        figure.savefig(folder / name, dpi=100)
        plt.close(figure)
        figures.append(f'<img src="{name}" alt="{html.escape(metric)} against strength">')
    return "".join(figures)


def _image_grid(folder: Path, rows: list[dict], max_images: int) -> str:
    """Per image: clean | protected | mimicry of clean | mimicry of protected, per variant."""
    methods = list(dict.fromkeys(r["method"] for r in rows if r["scenario"] == "visibility"))
    images = list(dict.fromkeys(r["image"] for r in rows if r["scenario"] == "visibility"))
    variants = list(
        dict.fromkeys(
            r["variant"]
            for r in rows
            if r["scenario"] not in ("visibility", "textual-inversion") and r["purifier"] == "none"
        )
    )
    parts = []
    for image in images[:max_images]:
        header = ["method", "clean", "protected"] + [f"clean → {v}" for v in variants]
        header += [f"protected → {v}" for v in variants]
        lines = []
        clean_cells = [_thumb(folder, f"mimicry/clean/{v}/{image}.png") for v in variants]
        for method in methods:
            cells = [_thumb(folder, f"clean/{image}.png")]
            cells += [_thumb(folder, f"protected/{method}/{image}.png")] + clean_cells
            cells += [_thumb(folder, f"mimicry/{method}/none/{v}/{image}.png") for v in variants]
            lines.append(f"<tr><td class='name'>{html.escape(method)}</td>{''.join(cells)}</tr>")
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        parts.append(f"<h3>{html.escape(image)}</h3><table><tr>{head}</tr>{''.join(lines)}</table>")
    return "".join(parts) or "<p>No images.</p>"


def _thumb(folder: Path, relative: str) -> str:
    """A table cell with the image if it exists (the page never points at a missing file)."""
    if not (folder / relative).is_file():
        return "<td>–</td>"
    return f'<td><img class="thumb" src="{html.escape(relative)}" alt=""></td>'


def method_summary(rows: list[dict], variant: str) -> dict[str, dict[str, float | None]]:
    """Per method: mean visibility metrics and mean protection metrics of one variant (no purifier).

    Keys: ``visible_<metric>`` for protected vs clean, ``shift_ratio`` (‖Δz‖∞/‖Δx‖∞) and
    ``mimicry_<metric>`` for the mimicry of protected vs of clean.
    """
    summary: dict[str, dict[str, float | None]] = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["scenario"] == "visibility"):
        visible = [r for r in rows if r["method"] == method and r["scenario"] == "visibility"]
        mimicked = [
            r
            for r in rows
            if r["method"] == method
            and r["purifier"] == "none"
            and r["variant"] == variant
            and r["image"] != "*"
        ]
        summary[method] = {
            "visible_psnr": _mean(r.get("psnr") for r in visible),
            "visible_ssim": _mean(r.get("ssim") for r in visible),
            "shift_ratio": _mean(r.get("latent_shift_ratio") for r in visible),
            "mimicry_psnr": _mean(r.get("psnr") for r in mimicked),
            "mimicry_ssim": _mean(r.get("ssim") for r in mimicked),
        }
    return summary
