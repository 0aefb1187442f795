"""Aggregation of result rows, on small hand-made rows (no model, no files)."""

from __future__ import annotations

import math

import pytest

from mimicshield.evaluation import summary


def _row(
    method, purifier, variant, image="a", scenario="sdedit", victim="", baseline=None, **values
):
    keys = {"method": method, "purifier": purifier, "scenario": scenario, "variant": variant}
    baseline = baseline or ("clean" if scenario == "visibility" else summary.PRIMARY)
    return keys | {"victim": victim, "baseline": baseline, "image": image} | values


def _visible(method, image, **values):
    return _row(method, "none", "protected", image, scenario="visibility", **values)


def test_worst_case_takes_per_metric_the_purifier_that_helps_the_imitator_most():
    rows = [
        _row("m", "none", "sdedit@0.3", ssim=0.5, lpips=0.4),
        _row("m", "jpeg75", "sdedit@0.3", ssim=0.8, lpips=0.3),
        _row("m", "blur1", "sdedit@0.3", ssim=0.6, lpips=0.1),
        # against the unpurified clean mimicry, blur looks even stronger: not the worst case's basis
        _row("m", "blur1", "sdedit@0.3", baseline="clean", ssim=0.9, lpips=0.0),
    ]
    # SSIM: higher = mimicry closer to the clean one = weaker (jpeg); LPIPS: lower (blur).
    [worst] = summary.worst_case(rows)
    assert (worst["method"], worst["variant"]) == ("m", "sdedit@0.3")
    assert worst["metrics"]["ssim"]["purifier"] == "jpeg75"
    assert worst["metrics"]["ssim"]["estimate"].mean == 0.8
    assert worst["metrics"]["lpips"]["purifier"] == "blur1"
    assert worst["metrics"]["lpips"]["estimate"].mean == 0.1


def test_cells_are_estimated_over_images_and_fd_comes_from_the_set_row_with_its_note():
    rows = [
        _visible("m", "a", psnr=35.0),
        _row("m", "none", "sdedit@0.3", "a", ssim=0.4, psnr=float("nan")),
        _row("m", "none", "sdedit@0.3", "b", ssim=0.6),
        _row("m", "none", "sdedit@0.3", "*", fd_clip=None, note="not computed: 2 images"),
        _row("m", "jpeg75", "sdedit@0.3", "*", fd_clip=7.0),
    ]
    cells = summary.cell_estimates(rows)
    cell = cells[("m", "none", "sdedit@0.3", "")]
    assert (
        cell["ssim"]["estimate"].mean == pytest.approx(0.5) and cell["ssim"]["estimate"].count == 2
    )
    assert cell["ssim"]["estimate"].low >= 0.4 and cell["ssim"]["estimate"].high <= 0.6
    assert cell["psnr"]["estimate"] is None
    assert cell["fd_clip"] == {"estimate": None, "note": "not computed: 2 images"}
    assert cells[("m", "jpeg75", "sdedit@0.3", "")]["fd_clip"]["estimate"].mean == 7.0
    assert summary.protection_metrics(rows) == ["ssim", "psnr", "fd_clip"]
    assert summary.set_notes(rows) == ["not computed: 2 images"]


def test_pivot_has_methods_as_rows_ratios_to_noise_and_marks_cells_like_noise():
    rows = []
    for image, offset in zip("abcdef", (0.0, 0.1, -0.1, 0.05, -0.05, 0.02), strict=True):
        rows += [
            _row("noise", "none", "sdedit@0.3", image, ssim=0.8 + offset),
            _row("strong", "none", "sdedit@0.3", image, ssim=0.4 + offset),
            _row(
                "weak",
                "none",
                "sdedit@0.3",
                image,
                ssim=0.8 + offset + (0.01 if image in "ab" else -0.01),
            ),
            _row("strong", "jpeg75", "sdedit@0.3", image, ssim=0.7 + offset),
        ]
    table = summary.pivot(rows, "ssim", victim="")
    assert table["columns"] == [("sdedit@0.3", "none"), ("sdedit@0.3", "jpeg75")]
    assert [line["method"] for line in table["rows"]] == ["strong", "weak", "noise"]
    strong, weak, noise = (line["cells"] for line in table["rows"])
    # means 0.4 + 0.02/6 and 0.8 + 0.02/6
    assert strong[0]["ratio"] == pytest.approx((0.4 + 0.02 / 6) / (0.8 + 0.02 / 6))
    assert strong[0]["difference"].mean == pytest.approx(-0.4) and not strong[0]["like_noise"]
    assert weak[0]["like_noise"] and weak[1] is None and noise[1] is None
    assert strong[1]["ratio"] is None and strong[1]["difference"] is None  # no noise under jpeg
    [sentence] = summary.like_noise_sentences(rows)
    assert sentence.startswith("weak is not distinguishable from the noise control")
    assert "ssim at sdedit@0.3 / none" in sentence


def test_transfer_matrix_has_victims_as_columns():
    rows = [
        _row(method, "none", "sdedit@0.3", image, victim=victim, ssim=value)
        for method, victim, value in [
            ("m", "sd15", 0.2), ("m", "sd2", 0.6), ("noise", "sd15", 0.8), ("noise", "sd2", 0.8),
        ]
        for image in "ab"
    ]  # fmt: skip
    matrix = summary.transfer_matrix(rows, "ssim")
    assert matrix["columns"] == [("sd15", "sdedit@0.3"), ("sd2", "sdedit@0.3")]
    [m_line, noise_line] = matrix["rows"]
    assert [cell["ratio"] for cell in m_line["cells"]] == pytest.approx([0.25, 0.75])
    assert summary.victims(rows) == ["sd15", "sd2"]


def test_visibility_estimates_per_method_over_the_columns_any_row_has():
    rows = [
        _visible("m", "a", psnr=30.0, latent_shift_ratio=8.0, unrelated=1.0),
        _visible("m", "b", psnr=34.0, latent_shift_ratio=None),
        _visible("noise", "a", seconds=0.5),
        _row("m", "none", "sdedit@0.3", ssim=0.1),
    ]
    assert summary.visibility_columns(rows) == ["psnr", "latent_shift_ratio", "seconds"]
    estimates = summary.visibility_estimates(rows)
    assert estimates["m"]["psnr"].mean == 32.0 and estimates["m"]["psnr"].count == 2
    assert estimates["m"]["latent_shift_ratio"].mean == 8.0 and estimates["m"]["seconds"] is None
    assert estimates["noise"]["seconds"].mean == 0.5 and estimates["noise"]["psnr"] is None


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
