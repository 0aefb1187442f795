"""`mimicshield mimic` end to end on temp folders, with a bad file among good ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mimicshield.cli.main import main


@pytest.fixture
def folder(image_folder):
    """Two readable images of one size and a corrupt one."""
    inputs = image_folder("photo.png", "art.jpg")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return inputs


def _mimic(*args, model):
    return main(["mimic", *map(str, args), "--model", str(model), "--device", "cpu"])


def _size(path):
    with Image.open(path) as image:
        return image.size


def test_sdedit_writes_one_png_per_strength_and_reports_the_bad_file(
    folder, tmp_path, tiny_model_dir, capsys, digests
):
    before = digests(folder)
    out = tmp_path / "out"
    code = _mimic(
        "sdedit",
        folder,
        "-o",
        out,
        "--strength",
        "0.1,0.5",
        "--num-inference-steps",
        "4",
        model=tiny_model_dir,
    )
    stderr = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "art-sdedit@0.1.png",
        "art-sdedit@0.5.png",
        "photo-sdedit@0.1.png",
        "photo-sdedit@0.5.png",
    ]
    assert all(_size(out / name) == (20, 16) for name in written)
    assert digests(folder) == before  # inputs untouched


def test_sdedit_same_seed_same_files_and_one_step(folder, tmp_path, tiny_model_dir):
    photo = folder / "photo.png"
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            _mimic(
                "sdedit",
                photo,
                "-o",
                out,
                "--num-inference-steps",
                "3",
                "--strength",
                "0.4",
                "--seed",
                "7",
                model=tiny_model_dir,
            )
            == 0
        )
        runs.append((out / "photo-sdedit@0.4.png").read_bytes())
    assert runs[0] == runs[1]
    out = tmp_path / "one-step"
    assert (
        _mimic("sdedit", photo, "-o", out, "--one-step", "--strength", "0.2", model=tiny_model_dir)
        == 0
    )
    assert _size(out / "photo-onestep@0.2.png") == (20, 16)


def test_inpaint_with_generated_mask_keeps_the_middle(folder, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    photo = folder / "photo.png"
    code = _mimic(
        "inpaint",
        photo,
        "-o",
        out,
        "--mask",
        "border",
        "--num-inference-steps",
        "2",
        model=tiny_model_dir,
    )
    assert code == 0
    with Image.open(out / "photo-inpaint-border.png") as result, Image.open(photo) as original:
        result, original = np.asarray(result), np.asarray(original.convert("RGB"))
    assert np.array_equal(result[4:12, 5:15], original[4:12, 5:15])  # the kept centre box
    assert not np.array_equal(result, original)


def test_inpaint_mask_file_of_the_wrong_size_fails_that_file_only(
    folder, tmp_path, tiny_model_dir, capsys, smooth_picture
):
    Image.new("L", (20, 16), 255).save(tmp_path / "mask.png")
    smooth_picture(2, size=(24, 24)).save(folder / "square.png")
    out = tmp_path / "out"
    code = _mimic(
        "inpaint",
        folder,
        "-o",
        out,
        "--mask",
        tmp_path / "mask.png",
        "--num-inference-steps",
        "2",
        model=tiny_model_dir,
    )
    stderr = capsys.readouterr().err
    assert code == 1
    assert "square.png" in stderr and "mask must have shape" in stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "art-inpaint-file.png",
        "photo-inpaint-file.png",
    ]


def test_textual_inversion_learns_from_the_readable_images_and_generates(
    folder, tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "out"
    code = _mimic(
        "textual-inversion",
        folder,
        "-o",
        out,
        "--train-steps",
        "2",
        "--num-inference-steps",
        "2",
        "--num-images",
        "2",
        model=tiny_model_dir,
    )
    captured = capsys.readouterr()
    assert code == 1  # the broken file is reported, the others were used
    assert "broken.png" in captured.err
    assert "from 2 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "learned-embedding.safetensors",
        "textual-inversion-000.png",
        "textual-inversion-001.png",
    ]
    assert _size(out / "textual-inversion-000.png") == (20, 16)


@pytest.mark.parametrize(
    ("options", "used"),
    [
        ([], "in 2 steps of 1 at learning rate 0.005"),
        (["--preset", "gpu"], "in 2 steps of 4 at learning rate 0.002"),
        (
            ["--preset", "gpu", "--batch-size", "2", "--learning-rate", "0.01"],
            "of 2 at learning rate 0.01",
        ),
    ],
)
def test_textual_inversion_trains_with_the_preset_and_the_options_over_it(
    folder, tmp_path, tiny_model_dir, capsys, options, used
):
    code = _mimic(
        "textual-inversion",
        folder / "photo.png",
        "-o",
        tmp_path / "out",
        *options,
        *("--train-steps", "2", "--num-inference-steps", "1", "--num-images", "1"),
        model=tiny_model_dir,
    )
    assert code == 0
    assert used in capsys.readouterr().out  # what the learned token records it was trained with


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inpaint", "--mask", "nowhere.png"], "--mask must be one of"),
        (["textual-inversion", "--prompt", "no slot"], "--prompt must contain {}"),
        (["textual-inversion", "--train-steps", "0"], "steps must be a whole number ≥ 1, got 0"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    folder, tmp_path, tiny_model_dir, capsys, args, message
):
    scenario, *options = args
    code = _mimic(
        scenario, folder / "photo.png", "-o", tmp_path / "out", *options, model=tiny_model_dir
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "0.1,1.5", "a"])
def test_bad_strength_is_a_usage_error(folder, tmp_path, tiny_model_dir, capsys, value):
    code = _mimic(
        "sdedit",
        folder / "photo.png",
        "-o",
        tmp_path / "out",
        "--strength",
        value,
        model=tiny_model_dir,
    )
    assert code == 2
    assert "strength" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refuses_to_write_into_an_input_folder(folder, tiny_model_dir, capsys, digests):
    before = digests(folder)
    assert _mimic("sdedit", folder / "photo.png", "-o", folder, model=tiny_model_dir) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert digests(folder) == before


def test_textual_inversion_refuses_mixed_sizes(
    folder, tmp_path, tiny_model_dir, capsys, smooth_picture
):
    smooth_picture(2, size=(24, 24)).save(folder / "square.png")
    code = _mimic(
        "textual-inversion",
        folder,
        "-o",
        tmp_path / "out",
        "--train-steps",
        "1",
        model=tiny_model_dir,
    )
    assert code == 2
    assert "one size" in capsys.readouterr().err
