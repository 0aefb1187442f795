"""The report's plots: PNG files written with matplotlib.

matplotlib is imported inside the functions, so importing mimicshield never imports it (it is
slow to import and picks a window backend on first use).
"""

from __future__ import annotations

from pathlib import Path


def write_sdedit_plots(
    folder: Path, series: dict[str, dict[str, list[tuple[float, float]]]]
) -> dict[str, str]:
    """One PNG per metric: the mean value against SDEdit strength, a line per method.

    Args:
        folder: the report's folder; the plots go to ``folder/plots/<metric>.png``.
        series: metric → method → (strength, mean) points sorted by strength, as
            ``summary.sdedit_series`` returns them.

    Returns:
        metric → the plot's path relative to ``folder`` (what the page links to), for metrics
        with at least two strengths; empty, and no folder made, where there are none.
    """
    # A curve needs two strengths; a single point per method is already in the tables.
    curves = {m: lines for m, lines in series.items() if any(len(p) > 1 for p in lines.values())}
    if not curves:
        return {}
    (folder / "plots").mkdir(exist_ok=True)
    paths = {}
    for metric, lines in curves.items():
        paths[metric] = f"plots/{metric}.png"
        _plot_against_strength(folder / paths[metric], metric, lines)
    return paths


def _plot_against_strength(
    path: Path, metric: str, lines: dict[str, list[tuple[float, float]]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method, points in lines.items():
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    axes.set_xlabel("SDEdit strength")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mimicry of protected vs of clean")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
