"""``protect_files`` from Python: the run, resume, sharding, and the awkward files.

Awkward files: broken, too large, too small, animations, pages, 16 bits, JPEG output.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from mimicshield import METHODS, Budget, LatentDiffusion, RunOptions, protect_files, tile_grid
from mimicshield.imagefiles import ImageFileError
from mimicshield.runtime import InputError, MemoryPlanError, Processes, collect_inputs, jobs
from mimicshield.runtime.jobs import ProtectionJob
from mimicshield.runtime.large_images import Tiles, WorkingResolution
from mimicshield.runtime.memory import ModelSize, estimate_bytes
from mimicshield.runtime.records import settings_fingerprint


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


def _budget_between(model, small: tuple[int, int], large: tuple[int, int]) -> int:
    """A memory budget that holds an image of ``small`` (H, W) whole but not one of ``large``."""
    size = ModelSize.of(model)
    common = dict(batch_size=1, dtype="fp32", unet_backward_draws=0)
    small_need = estimate_bytes(size, height=small[0], width=small[1], **common)
    large_need = estimate_bytes(size, height=large[0], width=large[1], **common)
    return (small_need + large_need) // 2


@pytest.mark.parametrize(
    "way, expected",
    [
        (WorkingResolution(), {"way": "working-resolution", "working_size": [32, 32]}),
        (
            Tiles(tile=32, overlap=8),
            {"way": "tiles", "tile": 32, "overlap": 8, "tiles": len(tile_grid(256, 256, 32, 8))},
        ),
    ],
)
def test_an_image_too_large_for_memory_goes_the_large_image_way_and_holds_the_budget(
    inputs, model, tmp_path, smooth_picture, way, expected
):
    large = inputs[0].parent / "large.png"
    smooth_picture(9, size=(256, 256)).save(large)
    steps = []
    options = RunOptions(
        memory_budget_bytes=_budget_between(model, (16, 24), (256, 256)), large_images=way
    )
    summary = protect_files(
        [*inputs, large],
        tmp_path / "out",
        _method(),
        model,
        options,
        on_step=lambda step, total, value: steps.append((step, total)),
    )
    assert [Path(result.input).name for result in summary.failed] == ["broken.png"]
    (result,) = [r for r in summary.results if r.input == str(large)]
    assert result.ok and result.protection == expected
    assert 0 < result.linf_255 <= 6  # the budget, read back from the saved file
    assert np.abs(_pixels(result.output) - _pixels(large)).max() == result.linf_255
    others = [r for r in summary.results if r.ok and r.input != str(large)]
    assert {r.protection["way"] for r in others} == {"whole"}
    tiles = expected.get("tiles", 1)  # the tiled file reports its steps as one count
    assert (tiles * 2, tiles * 2) in steps


def test_an_image_that_fits_no_way_is_refused_alone(inputs, model, tmp_path, smooth_picture):
    large = inputs[0].parent / "large.png"
    smooth_picture(9, size=(256, 256)).save(large)
    budget = _budget_between(model, (16, 24), (32, 32))  # the working size does not fit
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


# ------------------------------------------------------------ frames, 16 bits, JPEG, settings

_DURATIONS = [40, 120, 300]


def _frames_of(path):
    """Every frame of a file as Pillow decodes it: (H, W, 3) int arrays; the file's timing."""
    with Image.open(path) as image:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB"), dtype=np.int32))
            durations.append(frame.info.get("duration"))
        return frames, durations, image.info.get("loop")


def test_animations_and_pages_are_protected_frame_by_frame(
    model, tmp_path, smooth_picture, digests
):
    folder = tmp_path / "frames"
    folder.mkdir()
    first, *rest = [smooth_picture(seed) for seed in range(3)]
    timing = dict(save_all=True, append_images=rest, duration=_DURATIONS, loop=2)
    first.save(folder / "clip.gif", **timing)
    first.save(folder / "clip.webp", lossless=True, **timing)
    first.save(folder / "apng.png", **timing)
    first.save(folder / "pages.tiff", save_all=True, append_images=rest)
    before = digests(folder)
    summary = protect_files(collect_inputs([folder]), tmp_path / "out", _method(), model)
    assert not summary.failed and digests(folder) == before
    written = {Path(r.input).name: Path(r.output).name for r in summary.results}
    assert written == {
        "apng.png": "apng.png",
        "clip.gif": "clip.png",  # GIF's palette cannot hold the budget: APNG
        "clip.webp": "clip.webp",
        "pages.tiff": "pages.tiff",
    }
    for result in summary.results:
        original, original_durations, loop = _frames_of(result.input)
        saved, durations, saved_loop = _frames_of(result.output)
        assert len(saved) == len(original) == result.frames == 3
        differences = [np.abs(s - o).max() for s, o in zip(saved, original, strict=True)]
        assert max(differences) == result.linf_255 <= 6 and min(differences) > 0
        if result.input_format != "TIFF":
            assert [round(d) for d in durations] == _DURATIONS and saved_loop == loop == 2
            assert list(result.animation["durations_ms"]) == [float(d) for d in _DURATIONS]
    record = json.loads(summary.record_path.read_text())
    entries = {Path(image["input"]).name: image for image in record["images"]}
    assert entries["clip.gif"]["input_format"] == "GIF"
    assert entries["clip.gif"]["output_format"] == "png" and entries["clip.gif"]["frames"] == 3


def test_sixteen_bit_inputs_stay_sixteen_bit_within_budget(model, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    folder = tmp_path / "deep"
    folder.mkdir()
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 65535, 20 * 24).reshape(20, 24)
    gray = (smooth + rng.integers(0, 50, (20, 24))).clip(0, 65535).astype(np.uint16)
    Image.fromarray(gray).save(folder / "gray.png")
    colour = np.stack([smooth, smooth[::-1], smooth[:, ::-1]], axis=2).astype(np.uint16)
    tifffile.imwrite(folder / "colour.tiff", colour, photometric="rgb")
    summary = protect_files(collect_inputs([folder]), tmp_path / "out", _method(), model)
    assert not summary.failed
    budget = 6 * 257  # 6/255 in 16-bit levels
    with Image.open(tmp_path / "out" / "gray.png") as written:
        assert written.mode.startswith("I;16")
        change = np.abs(np.asarray(written, dtype=np.int32) - gray).max()
    assert 0 < change <= budget
    saved = tifffile.imread(tmp_path / "out" / "colour.tiff")
    assert saved.dtype == np.uint16 and saved.shape == colour.shape
    change = np.abs(saved.astype(np.int32) - colour).max()
    assert 0 < change <= budget
    assert {result.bit_depth for result in summary.results} == {16}
    assert all(result.linf_255 <= 6 for result in summary.results)


def test_jpeg_output_records_the_codec_share_and_the_latent_shift(model, tmp_path, smooth_picture):
    folder = tmp_path / "in"
    folder.mkdir()
    smooth_picture(3, size=(64, 48)).save(folder / "photo.png")
    options = RunOptions(image_format="jpeg", quality=90)
    summary = protect_files([folder / "photo.png"], tmp_path / "out", _method(), model, options)
    (result,) = summary.results
    assert result.ok and result.output.endswith("photo.jpg") and result.linf_255 <= 6
    with Image.open(result.output) as written:
        assert written.format == "JPEG"
    figures = result.jpeg
    assert figures["quality"] == 90 and "before JPEG" in figures["budget_checked_on"]
    codec, saved = figures["linf_255_codec_on_original"], figures["linf_255_saved"]
    assert codec > 0 and saved >= 0.5 * codec
    assert saved == np.abs(_pixels(result.output) - _pixels(folder / "photo.png")).max()
    assert figures["latent_shift_lossless"] > 0 and figures["latent_shift_after_jpeg"] > 0
    record = json.loads(summary.record_path.read_text())
    assert record["jpeg"]["quality"] == 90 and record["images"][0]["jpeg"] == figures


def test_the_fingerprint_covers_format_quality_and_stripping(model, tmp_path):
    job = ProtectionJob(method=_method(), output_dir=tmp_path)

    def fingerprint(**changes):
        return settings_fingerprint(dataclasses.replace(job, **changes), model.name, model.dtype)

    default = fingerprint()
    assert fingerprint(image_format="png") != default  # "auto" differs from a forced PNG
    assert fingerprint(strip_metadata=True) != default
    assert fingerprint(quality=50) == default  # quality changes nothing but JPEG output
    assert fingerprint(image_format="jpeg") != fingerprint(image_format="jpeg", quality=50)
    with pytest.raises(ValueError, match=r"JPEG quality must lie in \[1, 100\], got 0"):
        dataclasses.replace(job, quality=0)  # refused before any file is protected


def test_a_file_the_networks_cannot_take_fails_alone(inputs, model, tmp_path):
    """A 1×1 picture is a 1×1 latent: the tiny UNet's group norm refuses it (a real failure)."""
    speck = inputs[0].parent / "speck.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(speck)
    summary = protect_files([speck, *inputs], tmp_path / "out", _method(), model)
    errors = {Path(result.input).name: result.error for result in summary.failed}
    assert set(errors) == {"speck.png", "broken.png"}
    assert errors["speck.png"].startswith(f"{speck}: could not be protected (")
    assert len(summary.results) - len(summary.failed) == 4


def test_pages_of_different_sizes_fail_alone(inputs, model, tmp_path, smooth_picture):
    pages = inputs[0].parent / "pages.tiff"
    smooth_picture(1).save(pages, save_all=True, append_images=[smooth_picture(2, (24, 24))])
    summary = protect_files([pages, *inputs], tmp_path / "out", _method(), model)
    errors = {Path(result.input).name: result.error for result in summary.failed}
    assert "pages.tiff: its frames or pages differ in size (20×16, 24×24)" in errors["pages.tiff"]
    assert len(summary.results) - len(summary.failed) == 4


def test_a_file_that_fails_its_checks_after_writing_is_removed(
    inputs, model, tmp_path, monkeypatch
):
    def unreadable(path, **options):
        raise ImageFileError(f"{path}: could not be read back")

    monkeypatch.setattr(jobs, "read_image", _only_for_outputs(jobs.read_image, unreadable))
    summary = protect_files(inputs[1:3], tmp_path / "out", _method(), model)
    assert [result.output for result in summary.results] == [None, None]
    assert all("could not be read back" in result.error for result in summary.results)
    assert not list((tmp_path / "out").glob("*.png")), "no unchecked file is left behind"


def _only_for_outputs(read, fail):
    """``read`` for inputs, ``fail`` for the files a run writes (under an "out" folder)."""
    return lambda path, **options: (fail if "out" in Path(path).parts else read)(path, **options)


def test_an_earlier_result_is_reused_only_if_protected_the_same_way(
    inputs, model, tmp_path, smooth_picture
):
    large = inputs[0].parent / "large.png"
    smooth_picture(9, size=(96, 96)).save(large)
    out = tmp_path / "out"
    protect_files([large], out, _method(), model)  # fits whole with the automatic budget
    tight = RunOptions(memory_budget_bytes=_budget_between(model, (16, 24), (96, 96)))
    again = protect_files([large], out, _method(), model, tight)  # now the working resolution
    (result,) = again.results
    assert result.ok and not result.reused
    assert result.protection["way"] == "working-resolution"
