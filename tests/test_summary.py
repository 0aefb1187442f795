"""Aggregation of result rows, on small hand-made rows (no model, no files)."""

from __future__ import annotations

import math

import pytest

from mimicshield.evaluation import summary


def _row(method, purifier, variant, image="a", scenario="sdedit", **values):
    keys = {"method": method, "purifier": purifier, "scenario": scenario, "variant": variant}
    return keys | {"image": image} | values


def _visible(method, image, **values):
    return _row(method, "none", "protected", image, scenario="visibility", **values)


def test_worst_case_takes_per_metric_the_purifier_that_helps_the_imitator_most():
    rows = [
        _row("m", "none", "sdedit@0.3", ssim=0.5, lpips=0.4),
        _row("m", "jpeg75", "sdedit@0.3", ssim=0.8, lpips=0.3),
        _row("m", "blur1", "sdedit@0.3", ssim=0.6, lpips=0.1),
    ]
    # SSIM: higher = mimicry closer to the clean one = weaker (jpeg); LPIPS: lower (blur).
    assert summary.worst_case(rows) == [
        {"method": "m", "variant": "sdedit@0.3", "means": {"ssim": 0.8, "lpips": 0.1}}
    ]


def test_worst_case_compares_means_per_method_and_variant_and_skips_missing_values():
    rows = [
        _row("m", "none", "sdedit@0.3", "a", psnr=20.0, fd_clip=None),
        _row("m", "none", "sdedit@0.3", "b", psnr=30.0),
        _row("m", "jpeg75", "sdedit@0.3", "a", psnr=24.0),
        _row("m", "jpeg75", "sdedit@0.3", "b", psnr=24.0),
        _row("m", "none", "sdedit@0.3", "*", fd_clip=5.0),
        _row("m", "jpeg75", "sdedit@0.3", "*", fd_clip=float("nan")),
        _row("m", "none", "sdedit@0.5", "a", psnr=10.0),
        _row("n", "none", "sdedit@0.3", "a", psnr=40.0),
    ]
    worst = {(w["method"], w["variant"]): w["means"] for w in summary.worst_case(rows)}
    assert worst == {
        ("m", "sdedit@0.3"): {"psnr": 25.0, "fd_clip": 5.0},  # mean 25 beats 24; NaN skipped
        ("m", "sdedit@0.5"): {"psnr": 10.0, "fd_clip": None},
        ("n", "sdedit@0.3"): {"psnr": 40.0, "fd_clip": None},
    }


def test_cell_means_average_images_and_keep_the_order_of_first_rows():
    rows = [
        _visible("m", "a", psnr=35.0),
        _row("m", "jpeg75", "sdedit@0.3", "a", ssim=0.2),
        _row("m", "none", "sdedit@0.3", "a", ssim=0.4),
        _row("m", "none", "sdedit@0.3", "b", ssim=0.6),
        _row("m", "none", "sdedit@0.3", "*", fd_clip=7.0),
    ]
    cells = summary.cell_means(rows)
    assert [(c["method"], c["purifier"], c["variant"]) for c in cells] == [
        ("m", "jpeg75", "sdedit@0.3"),
        ("m", "none", "sdedit@0.3"),
    ]
    means = cells[1]["means"]
    assert set(means) == set(summary.HIGHER_IS_WEAKER)
    assert means["ssim"] == pytest.approx(0.5) and means["fd_clip"] == 7.0
    assert means["psnr"] is None and means["lpips"] is None
    assert summary.protection_metrics(rows) == ["ssim", "fd_clip"]


def test_visibility_means_per_method_over_the_columns_any_row_has():
    rows = [
        _visible("m", "a", psnr=30.0, latent_shift_ratio=8.0, unrelated=1.0),
        _visible("m", "b", psnr=34.0, latent_shift_ratio=None),
        _visible("noise", "a", seconds=0.5),
        _row("m", "none", "sdedit@0.3", ssim=0.1),
    ]
    assert summary.visibility_columns(rows) == ["psnr", "latent_shift_ratio", "seconds"]
    assert summary.visibility_means(rows) == {
        "m": {"psnr": 32.0, "latent_shift_ratio": 8.0, "seconds": None},
        "noise": {"psnr": None, "latent_shift_ratio": None, "seconds": 0.5},
    }


def test_sdedit_series_has_sorted_points_of_unpurified_sdedit_cells_only():
    rows = [
        _row("z", "none", "sdedit@0.5", ssim=0.5),
        _row("z", "none", "sdedit@0.1", ssim=0.9),
        _row("a", "none", "sdedit@0.1", ssim=0.8),
        _row("a", "jpeg75", "sdedit@0.1", ssim=0.1),
        _row("a", "none", "onestep@0.1", ssim=0.2),
    ]
    series = summary.sdedit_series(rows)
    assert series == {"ssim": {"a": [(0.1, 0.8)], "z": [(0.1, 0.9), (0.5, 0.5)]}}
    assert list(series["ssim"]) == ["a", "z"]
    assert summary.sdedit_series([_visible("m", "a", ssim=1.0)]) == {}


def test_method_summary_of_one_variant_without_purifier():
    rows = [
        _visible("m", "a", psnr=30.0, ssim=0.9, latent_shift_ratio=10.0),
        _visible("m", "b", psnr=32.0, ssim=0.7, latent_shift_ratio=20.0),
        _row("m", "none", "sdedit@0.3", "a", psnr=18.0, ssim=0.4),
        _row("m", "none", "sdedit@0.3", "b", psnr=22.0, ssim=0.6),
        _row("m", "jpeg75", "sdedit@0.3", "a", psnr=99.0, ssim=0.99),
        _row("m", "none", "sdedit@0.5", "a", psnr=99.0, ssim=0.99),
    ]
    values = summary.method_summary(rows, "sdedit@0.3")["m"]
    expected = {
        "visible_psnr": 31.0,
        "visible_ssim": 0.8,
        "shift_ratio": 15.0,
        "mimicry_psnr": 20.0,
        "mimicry_ssim": 0.5,
    }
    assert values.keys() == expected.keys()
    assert all(math.isclose(values[key], expected[key]) for key in expected)
    assert summary.method_summary(rows, "sdedit@0.9")["m"]["mimicry_ssim"] is None
