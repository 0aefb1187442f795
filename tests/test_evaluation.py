"""The evaluation grid, its resumable results and its report, on the tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mimicshield import Budget
from mimicshield.cli.main import main
from mimicshield.evaluation import Evaluation, EvaluationPlan, ResultsStore, write_report
from mimicshield.evaluation import grid as grid_module
from mimicshield.imagefiles import read_image
from mimicshield.metrics import load_metrics
from mimicshield.mimicry import SDEditScenario, TextualInversionScenario
from mimicshield.purify import parse_purifier


def _picture(path, seed, size=(16, 16)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _picture(inputs / "a.png", 0)
    _picture(inputs / "b.png", 1)
    return inputs


def _plan(**overrides):
    settings = {
        "methods": ("sds-", "noise"),
        "purifiers": (parse_purifier("none"), parse_purifier("jpeg75")),
        "scenarios": (SDEditScenario(strengths=(0.1, 0.3), num_inference_steps=4),),
        "budget": Budget.from_255(8, 2, 2),
    }
    return EvaluationPlan(**(settings | overrides))


def _evaluation(folder, out, model, plan=None):
    images = [read_image(path) for path in sorted(folder.iterdir())]
    metrics = load_metrics(["psnr", "ssim", "latent_shift"], model=model)
    return Evaluation(images, plan or _plan(), model, out, metrics)


def test_grid_writes_every_cell_and_resumes_without_recomputing(
    folder, tmp_path, tiny_model, monkeypatch
):
    out = tmp_path / "out"
    store = _evaluation(folder, out, tiny_model).run()
    keys = {
        (r["method"], r["purifier"], r["scenario"], r["variant"], r["image"]) for r in store.rows
    }
    for method in ("sds-", "noise"):
        for image in ("a", "b"):
            assert (method, "none", "visibility", "protected", image) in keys
            for purifier in ("none", "jpeg75"):
                for variant in ("sdedit@0.1", "sdedit@0.3", "onestep@0.1", "onestep@0.3"):
                    assert (method, purifier, "sdedit", variant, image) in keys
    visibility = [r for r in store.rows if r["scenario"] == "visibility"]
    assert all(0 < r["latent_shift_pixel_linf"] <= 8 / 255 + 1e-6 for r in visibility)
    noise_rows = [r for r in visibility if r["method"] == "noise"]
    assert all(abs(r["latent_shift_pixel_linf"] - 8 / 255) < 1e-6 for r in noise_rows)
    assert (out / "results.csv").read_text().count("\n") == len(store.rows) + 1

    calls = []
    monkeypatch.setattr(grid_module, "protect", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(SDEditScenario, "run", lambda *a, **k: calls.append(1))
    again = _evaluation(folder, out, tiny_model).run()
    assert calls == [] and len(again.rows) == len(store.rows)


def test_changed_settings_start_afresh(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    _evaluation(folder, out, tiny_model).run()
    changed = _plan(budget=Budget.from_255(4, 2, 2), methods=("noise",))
    store = _evaluation(folder, out, tiny_model, changed).run()
    assert {r["method"] for r in store.rows} == {"noise"}
    assert not (out / "protected" / "sds-").exists()
    visibility = [r for r in store.rows if r["scenario"] == "visibility"]
    assert all(abs(r["latent_shift_pixel_linf"] - 4 / 255) < 1e-6 for r in visibility)


def test_set_scenario_refuses_mixed_sizes(folder, tmp_path, tiny_model):
    _picture(folder / "c.png", 2, size=(20, 16))
    plan = _plan(scenarios=(TextualInversionScenario(steps=1, num_images=1),), methods=("noise",))
    with pytest.raises(ValueError, match="images of one size"):
        _evaluation(folder, tmp_path / "out", tiny_model, plan).run()


def test_report_references_only_existing_files(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    store = _evaluation(folder, out, tiny_model).run()
    report = write_report(out, store, title="t", notes=["a note"], plan_json="{}")
    page = report.read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources, "the report shows images and plots"
    assert all((out / source).is_file() for source in sources)
    assert "plots/ssim.png" in sources and "clean/a.png" in sources
    assert "protected/sds-/a.png" in sources
    assert "mimicry/clean/sdedit@0.3/a.png" in sources
    assert "mimicry/sds-/none/sdedit@0.3/a.png" in sources
    assert "a note" in page and "Worst case over purifiers" in page
    # ‖Δz‖∞, ‖Δx‖∞ and their ratio, under the names the latent-shift metric writes
    for column in ("latent_shift_latent_linf", "latent_shift_pixel_linf", "latent_shift_ratio"):
        assert f"<th>{column}</th>" in page


def test_report_escapes_names_and_notes(tmp_path):
    attack = "<script>alert(1)</script>"
    store = ResultsStore(tmp_path, {"f": 1})
    keys = {"method": attack, "purifier": "none", "image": attack}
    store.add(
        [
            keys | {"scenario": "visibility", "variant": "protected", "psnr": 30.0},
            keys | {"scenario": "sdedit", "variant": f"{attack}@0.3", "ssim": 0.5},
        ]
    )
    page = write_report(tmp_path, store, title=attack, notes=[attack], plan_json=attack).read_text()
    assert "<script" not in page
    # title ×2, note, tables, image grid, settings
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6


def test_importing_the_evaluation_leaves_matplotlib_unimported():
    code = "import sys, mimicshield.evaluation; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_results_store_reloads_its_rows(tmp_path):
    first = ResultsStore(tmp_path, {"seed": 1})
    first.add([{"method": "m", "purifier": "p", "scenario": "s", "variant": "v", "image": "i"}])
    again = ResultsStore(tmp_path, {"seed": 1})
    assert again.has(("m", "p", "s", "v", "i")) and not again.stale
    other = ResultsStore(tmp_path, {"seed": 2})
    assert other.stale and other.rows == []
    assert json.loads((tmp_path / "results.json").read_text())["fingerprint"] == {"seed": 1}


def test_cli_evaluate_on_a_two_image_folder(folder, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "evaluate", str(folder), "-o", str(out), "--model", str(tiny_model_dir),
            "--device", "cpu", "--methods", "sds-,noise", "--steps", "2", "--eps", "8",
            "--strengths", "0.3", "--num-inference-steps", "3", "--metrics", "psnr,ssim,clip",
        ]
    )  # fmt: skip
    assert code == 0
    assert {"results.csv", "results.json", "report.html"} <= {p.name for p in out.iterdir()}
    err = capsys.readouterr().err
    assert "metric 'clip' skipped" in err and "RANDOM weights" not in err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--scenarios", "sdedit,dreambooth", "unknown scenario 'dreambooth'"),
        ("--purify", "none,sharpen2", "unknown purifier 'sharpen2'"),
        ("--metrics", "psnr,vibes", "unknown metric 'vibes'"),
        ("--methods", "sds-,glaze", "unknown method 'glaze'"),
        ("--strengths", "0.3,2", "strength must lie in (0, 1], got 2"),
    ],
)
def test_cli_evaluate_bad_names_exit_2(
    option, value, message, folder, tmp_path, tiny_model_dir, capsys
):
    code = main(
        [
            "evaluate",
            str(folder),
            "-o",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model_dir),
            option,
            value,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_evaluate_empty_folder_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(empty), "-o", str(tmp_path / "o"), "--model", "tiny"]) == 2
    assert "no input images" in capsys.readouterr().err


def test_plan_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown method 'glaze'"):
        _plan(methods=("glaze",))
