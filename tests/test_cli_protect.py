"""`mimicshield protect` end to end on temp folders, including every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from mimicshield.cli.main import main


@pytest.fixture
def folder(image_folder):
    """photo.jpg, and art.png with an alpha gradient."""
    inputs = image_folder("photo.jpg", "art.png")
    with Image.open(inputs / "art.png") as art:
        rgba = art.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(inputs / "art.png")
    return inputs


@pytest.fixture
def protect(run_cli, protect_args, tiny_model_dir):
    """protect(*args) → exit code of a quick ``mimicshield protect`` run on the tiny model."""
    return lambda *args: run_cli(*protect_args(*args, model_dir=tiny_model_dir))


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_protects_a_folder_and_writes_a_full_record(
    folder, tmp_path, tiny_model_dir, capsys, protect, digests
):
    before = digests(folder)
    out = tmp_path / "out"
    assert protect(folder, "-o", out) == 0
    assert digests(folder) == before, "originals must never change"
    assert (out / "photo.png").is_file() and (out / "art.png").is_file()
    for name, original in (("photo.png", "photo.jpg"), ("art.png", "art.png")):
        difference = np.abs(_pixels(out / name) - _pixels(folder / original)).max()
        assert 0 < difference <= 6
    with Image.open(out / "art.png") as art, Image.open(folder / "art.png") as source:
        assert np.array_equal(np.asarray(art)[..., 3], np.asarray(source)[..., 3])
    (record_path,) = out.glob("protect-*.json")
    record = json.loads(record_path.read_text())
    assert record["method"]["method"] == "sds-" and record["method"]["eps_255"] == 6
    assert record["seed"] == 0 and record["versions"]["torch"] and record["model"]["name"]
    assert {image["ok"] for image in record["images"]} == {True}
    for image in record["images"]:
        assert 0 < image["linf_255"] <= 6 and image["psnr_db"] > 30 and 0 < image["ssim"] <= 1
    assert "protected 2 of 2" in capsys.readouterr().out


def test_same_seed_same_files(folder, tmp_path, tiny_model_dir):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "protect",
                    str(folder),
                    "-o",
                    str(tmp_path / name),
                    "--model",
                    str(tiny_model_dir),
                    "--device",
                    "cpu",
                    "--steps",
                    "2",
                    "--method",
                    "advdm",
                    "--seed",
                    "9",
                ]
            )
            == 0
        )
    assert (tmp_path / "a" / "photo.png").read_bytes() == (
        tmp_path / "b" / "photo.png"
    ).read_bytes()


def test_bad_files_are_reported_and_the_rest_still_processed(
    folder, tmp_path, tiny_model_dir, capsys, protect, digests, png_declaring
):
    png_declaring(folder / "bomb.png", 30_000, 30_000)  # Pillow's decompression-bomb limit
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    missing = tmp_path / "nowhere.png"
    before = digests(folder)
    out = tmp_path / "out"
    code = protect(folder, notes, missing, "-o", out)
    assert code == 1
    errors = capsys.readouterr().err
    for bad in ("bomb.png", "empty.png", "corrupt.jpg", "notes.txt", "nowhere.png"):
        assert bad in errors
    assert "Traceback" not in errors
    assert (out / "photo.png").is_file() and (out / "art.png").is_file()
    assert digests(folder) == before
    (record_path,) = out.glob("protect-*.json")
    outcome = {
        image["input"].split("/")[-1]: image["ok"]
        for image in json.loads(record_path.read_text())["images"]
    }
    assert outcome == {
        "art.png": True,
        "bomb.png": False,
        "corrupt.jpg": False,
        "empty.png": False,
        "photo.jpg": True,
        "notes.txt": False,
        "nowhere.png": False,
    }


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--eps", "-1", "eps must lie in [0, 255]"),
        ("--eps", "300", "eps must lie in [0, 255]"),
        ("--steps", "-1", "steps must be a whole number"),
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--noise-samples", "0", "noise samples must be a whole number ≥ 1, got 0"),
    ],
)
def test_out_of_range_values_exit_2_naming_the_value(
    option, value, message, folder, tmp_path, tiny_model_dir, capsys
):
    code = main(
        [
            "protect",
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
    assert not (tmp_path / "o").exists()


def test_unknown_method_is_a_usage_error(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["protect", str(folder), "-o", str(tmp_path / "o"), "--method", "glaze"])
    assert caught.value.code == 2
    assert "invalid choice: 'glaze'" in capsys.readouterr().err


def test_output_folder_equal_to_input_folder_is_refused(
    folder, tiny_model_dir, capsys, protect, digests
):
    before = digests(folder)
    assert protect(folder, "-o", folder) == 2
    assert "holds the input" in capsys.readouterr().err
    assert digests(folder) == before


def test_mask_is_applied_on_disk_and_a_wrong_size_is_named(
    folder, tmp_path, tiny_model_dir, capsys, protect
):
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[4:12, 5:15] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.new("RGB", (30, 30)).save(folder / "other-size.png")
    out = tmp_path / "out"
    assert protect(folder, "-o", out, "--mask", tmp_path / "mask.png") == 1
    assert "the mask is 20×16 but the image is 30×30" in capsys.readouterr().err
    changed = np.abs(_pixels(out / "photo.png") - _pixels(folder / "photo.jpg")).max(axis=2) > 0
    assert changed.any() and not changed[mask == 0].any()


def test_missing_model_exits_1_with_one_sentence(folder, tmp_path, capsys):
    code = main(
        ["protect", str(folder), "-o", str(tmp_path / "o"), "--model", "nobody-here/no-such-model"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "nobody-here/no-such-model" in err and "Traceback" not in err


def test_targets_gray_and_image_file(folder, tmp_path, tiny_model_dir, protect):
    for target in ("gray", str(folder / "photo.jpg")):
        out = tmp_path / f"out-{len(target)}"
        assert (
            protect(folder / "art.png", "-o", out, "--method", "photoguard", "--target", target)
            == 0
        )
    assert (
        protect(
            folder / "art.png",
            "-o",
            tmp_path / "x",
            "--method",
            "sdst",
            "--target",
            tmp_path / "none.png",
        )
        == 2
    )


def test_name_collisions_get_distinct_outputs(tmp_path, tiny_model_dir, smooth_picture, protect):
    inputs = tmp_path / "in"
    inputs.mkdir()
    smooth_picture(0).save(inputs / "same.jpg")
    smooth_picture(1).save(inputs / "same.png")
    out = tmp_path / "out"
    assert protect(inputs, "-o", out) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["same.png", "same.png.png"]


def test_env_prints_versions_and_devices(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "diffusers" in out and "cpu" in out


@pytest.mark.parametrize("switch, expected", [((), True), (("--no-channels-last",), False)])
def test_channels_last_is_the_cpu_default_and_can_be_turned_off(
    switch, expected, folder, tmp_path, tiny_model_dir, protect
):
    out = tmp_path / "out"
    assert protect(folder, "-o", out, *switch) == 0
    (record_path,) = out.glob("protect-*.json")
    assert json.loads(record_path.read_text())["speed"]["channels_last"] is expected


def test_metadata_is_kept_by_default_and_stripped_on_request_but_the_icc_profile(
    tmp_path, smooth_picture, protect, digests
):
    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate to display
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    smooth_picture(0).save(folder / "photo.jpg", exif=exif, icc_profile=icc, quality=95)
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("Author", "Ada")
    smooth_picture(1).save(folder / "art.png", pnginfo=chunks, dpi=(150, 150))
    before = digests(folder)
    assert protect(folder, "-o", tmp_path / "kept") == 0
    assert protect(folder, "-o", tmp_path / "bare", "--strip-metadata") == 0
    assert digests(folder) == before
    with Image.open(tmp_path / "kept" / "photo.png") as photo:
        assert photo.size == (16, 20)  # orientation applied
        assert photo.getexif().get(0x010F) == "TestCam" and photo.info["icc_profile"] == icc
    with Image.open(tmp_path / "kept" / "art.png") as art:
        assert art.text == {"Author": "Ada"} and "dpi" in art.info
    with Image.open(tmp_path / "bare" / "photo.png") as photo:
        assert not len(photo.getexif()) and photo.info["icc_profile"] == icc
    with Image.open(tmp_path / "bare" / "art.png") as art:
        assert art.text == {} and "dpi" not in art.info
    (record_path,) = (tmp_path / "bare").glob("protect-*.json")
    record = json.loads(record_path.read_text())
    assert record["strip_metadata"] is True
    metadata = {image["input"].split("/")[-1]: image["metadata"] for image in record["images"]}
    assert metadata["photo.jpg"]["kept"] == ["icc_profile"]
    assert "exif" in metadata["photo.jpg"]["stripped"] and not metadata["photo.jpg"]["dropped"]
    assert metadata["art.png"]["stripped"] == ["text", "dpi"]


def test_jpeg_format_writes_jpeg_and_records_the_codec_figures(folder, tmp_path, protect, capsys):
    out = tmp_path / "out"
    assert protect(folder / "photo.jpg", "-o", out, "--format", "jpeg", "--quality", "90") == 0
    with Image.open(out / "photo.jpg") as written:
        assert written.format == "JPEG"
    (record_path,) = out.glob("protect-*.json")
    (image,) = json.loads(record_path.read_text())["images"]
    assert image["output_format"] == "jpeg" and image["jpeg"]["quality"] == 90
    assert image["jpeg"]["linf_255_codec_on_original"] > 0
    assert protect(folder / "art.png", "-o", tmp_path / "o2", "--format", "jpeg") == 1
    assert "transparency, which JPEG cannot hold" in capsys.readouterr().err
    assert protect(folder, "-o", tmp_path / "o3", "--quality", "0") == 2
