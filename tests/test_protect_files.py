"""``protect_files`` from Python: the run, resume, and a run sharded over two processes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicshield import METHODS, Budget, LatentDiffusion, RunOptions, protect_files
from mimicshield.runtime import InputError, MemoryPlanError, Processes, collect_inputs
from mimicshield.runtime.memory import ModelSize, estimate_bytes


def _method():
    return METHODS["sds-"](budget=Budget.from_255(eps=6, step_size=3, steps=2))


@pytest.fixture
def model(tiny_model_dir):
    # A fresh load per test: protect_files may convert and configure the model it is given.
    return LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture
def inputs(tmp_path, smooth_picture):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(4):
        smooth_picture(index).save(folder / f"p{index}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return collect_inputs([folder])


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_protects_every_readable_file_and_reports_the_broken_one(inputs, model, tmp_path):
    started, finished = [], []
    summary = protect_files(
        inputs,
        tmp_path / "out",
        _method(),
        model,
        on_start=started.append,
        on_file=finished.append,
    )
    assert started == [5] and len(finished) == 5
    assert [Path(result.input).name for result in summary.results] == [p.name for p in inputs]
    (failed,) = summary.failed
    assert failed.input.endswith("broken.png") and "broken.png" in failed.error
    for result in summary.results:
        if result.ok:
            assert 0 < result.linf_255 <= 6
            difference = np.abs(_pixels(result.output) - _pixels(result.input)).max()
            assert difference == result.linf_255
    record = json.loads(summary.record_path.read_text())
    assert [image["ok"] for image in record["images"]] == [r.ok for r in summary.results]
    assert record["memory_plan"]["batch_size"] == summary.plan.batch_size == 1


def test_resume_reuses_finished_files_and_can_be_turned_off(inputs, model, tmp_path):
    out = tmp_path / "out"
    first = protect_files(inputs, out, _method(), model)
    assert not first.reused
    before = {path.name: path.read_bytes() for path in out.glob("*.png")}

    again = protect_files(inputs, out, _method(), model)
    assert [Path(result.input).name for result in again.reused] == [f"p{i}.png" for i in range(4)]
    assert {path.name: path.read_bytes() for path in out.glob("*.png")} == before

    fresh = protect_files(inputs, out, _method(), model, RunOptions(resume=False))
    assert not fresh.reused and len(fresh.results) - len(fresh.failed) == 4
    assert {path.name: path.read_bytes() for path in out.glob("*.png")} == before  # same seed


@dataclasses.dataclass(frozen=True)
class _Sibling(Processes):
    """One of two processes of a run, played one after the other in this test process."""

    name: str = "protect-sharded.json"

    def record_path(self, folder: Path) -> Path:
        return folder / self.name  # what the main process would broadcast

    def wait_for_everyone(self) -> None:  # the other process has already finished
        pass


def test_two_shards_cover_the_run_and_the_main_process_merges_one_record(inputs, model, tmp_path):
    single = protect_files(inputs, tmp_path / "single", _method(), model)
    out = tmp_path / "sharded"
    second = protect_files(inputs, out, _method(), model, processes=_Sibling(index=1, count=2))
    assert [result.input for result in second.results] == [str(path) for path in inputs[1::2]]
    assert (out / "protect-sharded.part-1-of-2.json").is_file()

    main = protect_files(inputs, out, _method(), model, processes=_Sibling(index=0, count=2))
    assert [result.input for result in main.results] == [str(path) for path in inputs]
    assert not list(out.glob("*.part-*.json"))  # parts merged and removed
    record = json.loads((out / "protect-sharded.json").read_text())
    assert record["processes"] == 2 and len(record["images"]) == 5
    for path in (tmp_path / "single").glob("*.png"):  # sharding changes no output byte
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert len(single.failed) == len(main.failed) == 1


def test_an_output_folder_that_holds_inputs_is_refused_before_any_work(inputs, model):
    with pytest.raises(InputError, match="holds the input"):
        protect_files(inputs, inputs[0].parent, _method(), model)
    assert not list(inputs[0].parent.glob("protect-*.json"))


def test_a_decompression_bomb_is_refused_by_name_and_the_rest_protected(
    inputs, model, tmp_path, png_declaring
):
    bomb = png_declaring(inputs[0].parent / "bomb.png", 30_000, 30_000)
    summary = protect_files([*inputs, bomb], tmp_path / "out", _method(), model)
    errors = {Path(result.input).name: result.error for result in summary.failed}
    assert set(errors) == {"broken.png", "bomb.png"}
    assert "bomb.png: declares more pixels than the limit" in errors["bomb.png"]
    assert len(summary.results) - len(summary.failed) == 4


def test_an_image_too_large_for_the_memory_budget_is_refused_alone(
    inputs, model, tmp_path, smooth_picture
):
    large = inputs[0].parent / "large.png"
    smooth_picture(9, size=(256, 256)).save(large)
    size = ModelSize.of(model)
    common = dict(batch_size=1, dtype="fp32", unet_backward_draws=0)
    small_need = estimate_bytes(size, height=16, width=24, **common)
    large_need = estimate_bytes(size, height=256, width=256, **common)
    budget = (small_need + large_need) // 2
    summary = protect_files(
        [*inputs, large], tmp_path / "out", _method(), model, RunOptions(memory_budget_bytes=budget)
    )
    errors = {Path(result.input).name: result.error for result in summary.failed}
    assert set(errors) == {"broken.png", "large.png"}
    assert "large.png: too large for the memory budget" in errors["large.png"]
    assert "Would fit" in errors["large.png"]
    assert len(summary.results) - len(summary.failed) == 4
    with pytest.raises(MemoryPlanError, match="Would fit"):  # a budget nothing fits is an error
        protect_files(inputs, tmp_path / "o2", _method(), model, RunOptions(memory_budget_bytes=1))
