"""The evaluation grid, its resumable results and its report, on the tiny model."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicshield import Budget
from mimicshield.cli.main import main
from mimicshield.evaluation import (
    KEY_COLUMNS,
    Evaluation,
    EvaluationPlan,
    ResultsStore,
    write_report,
)
from mimicshield.evaluation import grid as grid_module
from mimicshield.imagefiles import read_image
from mimicshield.metrics import LoadedMetrics, frechet_feature_distance, load_metrics
from mimicshield.mimicry import InpaintScenario, SDEditScenario, TextualInversionScenario
from mimicshield.purify import DiffusionPurifier, parse_purifier


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


def test_changed_settings_recompute_and_drop_rows_of_old_settings(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    _evaluation(folder, out, tiny_model).run()
    changed = _plan(budget=Budget.from_255(4, 2, 2), methods=("noise",))
    store = _evaluation(folder, out, tiny_model, changed).run()
    assert {r["method"] for r in store.rows} == {"noise"}
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
    victim = Path(tiny_model.name).name  # the victim label: the model folder's name
    assert f"mimicry/{victim}/clean/none/sdedit@0.3/a.png" in sources
    assert f"mimicry/{victim}/sds-/none/sdedit@0.3/a.png" in sources
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
    keys = {"method": "m", "purifier": "p", "scenario": "s", "variant": "v", "image": "i"}
    first.add([keys | {"victim": "x", "baseline": "clean", "_inputs": "d", "psnr": 1.0}])
    again = ResultsStore(tmp_path, {"seed": 1})
    assert again.has(("m", "p", "s", "v", "x", "clean", "i")) and not again.stale
    assert "_inputs" not in (tmp_path / "results.csv").read_text()
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
        ("--scenarios", "sdedit,hypernetwork", "unknown scenario 'hypernetwork'"),
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


# --------------------------------------------------------------------------- what a re-run redoes


class _Calls:
    """Counts protection, SDEdit and diffusion-purification calls, still running them."""

    def __init__(self, monkeypatch):
        self.protect, self.sdedit, self.purify = [], [], []
        protect, run = grid_module.protect, SDEditScenario.run
        apply = DiffusionPurifier.apply

        def counted_protect(*args, **kwargs):
            self.protect.append(1)
            return protect(*args, **kwargs)

        def counted_run(scenario, *args, **kwargs):
            self.sdedit.append(1)
            return run(scenario, *args, **kwargs)

        def counted_apply(purifier, *args, **kwargs):
            self.purify.append(purifier.num_inference_steps)
            return apply(purifier, *args, **kwargs)

        monkeypatch.setattr(grid_module, "protect", counted_protect)
        monkeypatch.setattr(SDEditScenario, "run", counted_run)
        monkeypatch.setattr(DiffusionPurifier, "apply", counted_apply)


def _quick_plan(**overrides):
    settings = {
        "methods": ("sds-", "noise"),
        "purifiers": (parse_purifier("none"),),
        "scenarios": (SDEditScenario(strengths=(0.3,), num_inference_steps=2, one_step=False),),
        "budget": Budget.from_255(8, 2, 1),
    }
    return EvaluationPlan(**(settings | overrides))


def _run(folder, out, model, plan, metrics=("psnr",), **options):
    images = [read_image(path) for path in sorted(folder.iterdir())]
    loaded = load_metrics(list(metrics), model=model)
    return Evaluation(images, plan, model, out, loaded, **options).run()


def test_adding_a_metric_fills_it_in_without_protecting_or_mimicking_again(
    folder, tmp_path, tiny_model, monkeypatch
):
    out = tmp_path / "out"
    first = _run(folder, out, tiny_model, _quick_plan())
    assert not any("ssim" in row for row in first.rows)
    calls = _Calls(monkeypatch)
    again = _run(folder, out, tiny_model, _quick_plan(), metrics=("psnr", "ssim"))
    assert calls.protect == calls.sdedit == []
    assert len(again.rows) == len(first.rows)
    assert all(isinstance(row["ssim"], float) for row in again.rows if row["image"] != "*")
    psnr = {tuple(r[c] for c in KEY_COLUMNS): r["psnr"] for r in first.rows}
    assert {tuple(r[c] for c in KEY_COLUMNS): r["psnr"] for r in again.rows} == psnr


def test_changing_the_diffusion_purifier_redoes_only_its_cells(
    folder, tmp_path, tiny_model, monkeypatch
):
    """The purifier's name (diffpure0.5) stays; its steps change: only its cells are redone."""
    out = tmp_path / "out"
    jpeg, ten = parse_purifier("jpeg75"), DiffusionPurifier(0.5, num_inference_steps=10)
    first = _run(folder, out, tiny_model, _quick_plan(purifiers=(jpeg, ten)))
    calls = _Calls(monkeypatch)
    four = DiffusionPurifier(0.5, num_inference_steps=4)
    again = _run(folder, out, tiny_model, _quick_plan(purifiers=(jpeg, four)))
    assert calls.protect == []
    # Two images × (the clean reference, sds-, noise) under diffpure0.5 with 4 steps; nothing else.
    assert calls.purify == [4] * 6 and len(calls.sdedit) == 6
    before = {tuple(r[c] for c in KEY_COLUMNS): r.get("psnr") for r in first.rows}
    after = {tuple(r[c] for c in KEY_COLUMNS): r.get("psnr") for r in again.rows}
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    assert changed and all(key[1] == "diffpure0.5" for key in changed)


def test_new_image_content_under_the_same_path_is_evaluated_again(
    folder, tmp_path, tiny_model, monkeypatch
):
    out = tmp_path / "out"
    _run(folder, out, tiny_model, _quick_plan())
    _picture(folder / "b.png", 7)  # same name, other pixels
    calls = _Calls(monkeypatch)
    _run(folder, out, tiny_model, _quick_plan())
    assert len(calls.protect) == 1  # sds- on b; noise needs no model call
    assert len(calls.sdedit) == 3  # b: clean, sds-, noise


def test_metric_values_of_another_setting_are_forgotten(tmp_path):
    store = ResultsStore(tmp_path, {"format": 2})
    key = ("m", "none", "sdedit", "v", "x", "clean", "a")
    row = store.update(
        key,
        "d",
        {"clip": 0.9, "psnr": 20.0},
        {"clip": {"setting": "clip model=A", "columns": ["clip"]}},
    )
    store.add([row])
    assert store.missing_metrics(key, "d", {"clip": "clip model=A"}) == []
    assert store.missing_metrics(key, "d", {"clip": "clip model=B"}) == ["clip"]
    assert store.missing_metrics(key, "other inputs", {"clip": "clip model=A"}) == ["clip"]
    store.forget_changed({"clip": "clip model=B"})  # asked for with B, even if B cannot load
    assert "clip" not in store.rows[0] and store.rows[0]["psnr"] == 20.0


# ------------------------------------------------------------------ baselines, small faults


def test_purified_cells_are_compared_with_both_baselines(folder, tmp_path, tiny_model):
    plan = _quick_plan(methods=("noise",), purifiers=(parse_purifier("blur2"),))
    store = _run(folder, tmp_path / "out", tiny_model, plan)
    rows = {
        (r["purifier"], r["baseline"], r["image"]): r
        for r in store.rows
        if r["scenario"] == "sdedit"
    }
    assert set(rows) == {("blur2", b, i) for b in ("clean", "purified-clean") for i in ("a", "b")}
    # Against the clean image's own (blurred) mimicry the blur's damage does not count.
    for image in ("a", "b"):
        assert (
            rows[("blur2", "purified-clean", image)]["psnr"]
            > rows[("blur2", "clean", image)]["psnr"]
        )
    out = tmp_path / "out" / "mimicry" / "tiny-sd0" / "clean"
    assert (out / "none" / "sdedit@0.3" / "a.png").is_file()
    assert (out / "blur2" / "sdedit@0.3" / "a.png").is_file()


def test_identical_images_get_a_capped_psnr_and_tiny_images_a_note_instead_of_ssim(
    tmp_path, tiny_model
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _picture(inputs / "small.png", 0, size=(8, 8))
    plan = _quick_plan(methods=("noise",), budget=Budget.from_255(0.4, 0.4, 1))
    store = _run(inputs, tmp_path / "out", tiny_model, plan, metrics=("psnr", "ssim"))
    visible = next(r for r in store.rows if r["scenario"] == "visibility")
    # An 8-bit file within 0.4/255 of an 8-bit original is the original: PSNR is capped at that
    # of a one-level difference in one of the 3·8·8 values, not dropped.
    assert visible["psnr"] == pytest.approx(10 * np.log10(255**2 * 3 * 8 * 8))
    assert all("ssim" not in r and "under 11 pixels" in r["note"] for r in store.rows)


def test_fd_is_not_reported_for_sets_no_larger_than_the_feature_dimension(
    folder, tmp_path, tiny_model, monkeypatch
):
    _picture(folder / "c.png", 2)
    monkeypatch.setattr(grid_module, "MIN_MEANINGFUL_SET", 3)
    eight = lambda images: images.flatten(1)[:, :8]  # noqa: E731  # 8-d features
    metrics = LoadedMetrics(
        pair={},
        sets={"fd_clip": lambda a, b: frechet_feature_distance(a, b, eight)},
        skipped=(),
        settings={"fd_clip": "eight"},
    )
    images = [read_image(path) for path in sorted(folder.iterdir())]
    plan = _quick_plan(methods=("noise",))
    store = Evaluation(images, plan, tiny_model, tmp_path / "out", metrics).run()
    sets = [r for r in store.rows if r["image"] == "*"]
    assert sets and all(r["fd_clip"] is None and "3 images is too small" in r["note"] for r in sets)
    monkeypatch.setattr(grid_module, "MIN_MEANINGFUL_SET", 4)
    store = Evaluation(images, plan, tiny_model, tmp_path / "out2", metrics).run()
    assert all("under the 4" in r["note"] for r in store.rows if r["image"] == "*")


# --------------------------------------------------------------------------- victims


def test_an_inpainting_victim_repaints_with_its_own_unet_and_gives_a_transfer_matrix(
    folder, tmp_path, tiny_model, tiny_inpaint_model
):
    scenarios = (
        SDEditScenario(strengths=(0.3,), num_inference_steps=2, one_step=False),
        InpaintScenario(num_inference_steps=2),
    )
    channels = []
    handle = tiny_inpaint_model.unet.register_forward_pre_hook(
        lambda module, args: channels.append(args[0].shape[1])
    )
    try:
        store = _run(
            folder, tmp_path / "out", tiny_model, _quick_plan(scenarios=scenarios),
            victims=[tiny_model, tiny_inpaint_model],
        )  # fmt: skip
    finally:
        handle.remove()
    assert set(channels) == {9}
    cells = {(r["victim"], r["variant"]) for r in store.rows if r["scenario"] != "visibility"}
    victims = ("tiny-sd0", "tiny-sd-inpaint0")
    assert cells == {(v, s) for v in victims for s in ("sdedit@0.3", "inpaint-border")}
    page = write_report(tmp_path / "out", store, title="t", surrogate="tiny").read_text()
    assert "Transfer: surrogate tiny × victims" in page
    assert "tiny → tiny-sd-inpaint0" in page


def test_cli_victims_are_a_comma_list_or_repeated(
    folder, tmp_path, tiny_model_dir, tiny_inpaint_model_dir
):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate", str(folder), "-o", str(out), "--model", str(tiny_model_dir),
            "--device", "cpu", "--methods", "noise", "--steps", "1", "--strengths", "0.3",
            "--num-inference-steps", "2", "--no-one-step", "--metrics", "psnr",
            "--scenarios", "sdedit,inpaint",
            "--victim", f"{tiny_model_dir},{tiny_inpaint_model_dir}", "--victim", "tiny",
        ]
    )  # fmt: skip
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["victim"] for r in rows if r["scenario"] != "visibility"} == {
        "tiny-sd0", "tiny-sd-inpaint0", "tiny"
    }  # fmt: skip


def test_sdedit_reference_conventions_change_the_cache_and_the_outputs(
    folder, tmp_path, tiny_model
):
    ours = _run(folder, tmp_path / "out", tiny_model, _quick_plan(methods=("noise",)))
    scenario = SDEditScenario(
        strengths=(0.3,), num_inference_steps=2, one_step=False, reference_conventions=True
    )
    reference = _run(
        folder, tmp_path / "out", tiny_model, _quick_plan(methods=("noise",), scenarios=(scenario,))
    )
    assert [r["psnr"] for r in ours.rows] != [r["psnr"] for r in reference.rows]


# --------------------------------------------------------------------------- processes


class _Sibling:
    """One of two processes of a run, played one after the other in this test process."""

    def __init__(self, index: int, count: int = 2):
        self.index, self.count = index, count

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait_for_everyone(self) -> None:  # the other process has already finished
        pass


def test_two_processes_share_the_images_and_the_main_one_merges(folder, tmp_path, tiny_model):
    _picture(folder / "c.png", 2)
    plan = _quick_plan(scenarios=(
        SDEditScenario(strengths=(0.3,), num_inference_steps=2, one_step=False),
        TextualInversionScenario(steps=1, num_images=1, num_inference_steps=1),
    ))  # fmt: skip
    single = _run(folder, tmp_path / "single", tiny_model, plan)
    out = tmp_path / "sharded"
    second = _run(folder, out, tiny_model, plan, processes=_Sibling(1))
    assert {r["image"] for r in second.rows} == {"b"}  # every second image from index 1
    assert (out / "results.part-1.json").is_file() and not (out / "results.json").exists()
    merged = _run(folder, out, tiny_model, plan, processes=_Sibling(0))
    assert not list(out.glob("results.part-*"))
    key = lambda row: tuple(row[c] for c in KEY_COLUMNS)  # noqa: E731
    assert sorted(map(key, merged.rows)) == sorted(map(key, single.rows))
    values = {key(r): r.get("psnr") for r in single.rows}
    assert all(values[key(r)] == r.get("psnr") for r in merged.rows)
    for path in (tmp_path / "single").rglob("*.png"):  # sharding changes no output byte
        assert (out / path.relative_to(tmp_path / "single")).read_bytes() == path.read_bytes()


def test_evaluate_under_accelerate_launch_with_two_processes(folder, tmp_path, tiny_model_dir):
    """A real 2-process `accelerate launch` on CPU gives the rows one process gives."""
    _picture(folder / "c.png", 2)
    options = [
        "--model", str(tiny_model_dir), "--device", "cpu", "--methods", "noise", "--steps", "1",
        "--strengths", "0.3", "--num-inference-steps", "2", "--no-one-step", "--metrics", "psnr",
    ]  # fmt: skip
    assert main(["evaluate", str(folder), "-o", str(tmp_path / "single"), *options]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m", "mimicshield",
    ]  # fmt: skip
    double = tmp_path / "double"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*launch, "evaluate", str(folder), "-o", str(double), *options],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (double / "report.html").is_file() and not list(double.glob("results.part-*"))

    def values(out):
        rows = json.loads((out / "results.json").read_text())["rows"]
        return sorted((tuple(r[c] for c in KEY_COLUMNS), r.get("psnr")) for r in rows)

    assert values(double) == values(tmp_path / "single")


def test_a_set_scenario_on_images_of_several_sizes_is_refused_before_any_work(
    tmp_path, tiny_model, smooth_picture
):
    for index, size in enumerate([(16, 16), (24, 16)]):
        smooth_picture(index, size).save(tmp_path / f"{index}.png")
    images = [read_image(tmp_path / f"{index}.png") for index in range(2)]
    plan = _plan(scenarios=(TextualInversionScenario(steps=1, num_images=1),))
    with pytest.raises(ValueError, match="need images of one size"):
        Evaluation(images, plan, tiny_model, tmp_path / "out", load_metrics(["psnr"]))
    assert not (tmp_path / "out").exists()
