"""The web page: its plain parts without a browser."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield import METHODS, Budget, RunOptions
from mimicshield.web import jobs, presets, views


def quick_method(eps_255: float = 1, steps: int = 2):
    """SDS− at a budget small enough that two steps of one level would exceed it unprojected."""
    return METHODS["sds-"](budget=Budget.from_255(eps_255, 1, steps))


def levels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------- without a browser


def test_importing_the_web_package_loads_no_gradio_and_changes_no_environment():
    code = (
        "import os, sys; before = dict(os.environ); "
        "import mimicshield.web, mimicshield.web.jobs, mimicshield.web.views, "
        "mimicshield.web.presets, mimicshield.cli.main; "
        "assert 'gradio' not in sys.modules, 'gradio imported'; "
        "assert dict(os.environ) == before, 'environment changed'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_presets_name_their_budget_in_0_255_units():
    assert list(presets.PRESETS) == ["light", "standard", "strong"]
    standard = presets.PRESETS["standard"]
    assert (standard.eps_255, standard.steps) == (16, 100)  # the paper's reference budget
    assert standard.label("standard").startswith("standard — ε 16/255, 100 steps")


def test_uploads_are_refused_as_a_whole_only_when_none_or_too_many(tmp_path):
    limits = jobs.UploadLimits(max_files=2)
    with pytest.raises(jobs.UploadError, match="Add one or more images"):
        jobs.check_uploads(None, limits)
    with pytest.raises(jobs.UploadError, match="3 files were given.*at most 2"):
        jobs.check_uploads(["a.png", "b.png", "c.png"], limits)
    assert jobs.check_uploads(["a.png"], limits) == [Path("a.png")]


def test_job_folders_live_until_the_sessions_next_job_or_release(tmp_path):
    folders = jobs.JobFolders(tmp_path)
    first = folders.start("session")
    (first / "file").write_text("x")
    second = folders.start("session")
    assert not first.exists() and second.is_dir()
    other = folders.start("other session")
    folders.release("session")
    assert not second.exists() and other.is_dir()


def test_a_job_protects_the_good_file_names_the_bad_one_and_zips_the_record(
    tiny_model, smooth_picture, tmp_path
):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    smooth_picture(0).save(uploads / "good.png")
    (uploads / "broken.png").write_bytes(b"not an image at all")
    outcome = jobs.run_job(
        [uploads / "good.png", uploads / "broken.png"],
        tmp_path / "job",
        quick_method(),
        tiny_model,
        RunOptions(),
        cancelled=threading.Event(),
    )
    assert [path.name for path in outcome.downloads] == ["good.png", jobs.ZIP_NAME]
    assert len(outcome.messages) == 1 and outcome.messages[0].startswith("broken.png: ")
    assert str(uploads) not in outcome.messages[0]  # the upload's name, not the server's path
    assert np.abs(levels(outcome.downloads[0]) - levels(uploads / "good.png")).max() <= 1
    with zipfile.ZipFile(outcome.downloads[1]) as archive:
        names = archive.namelist()
        record = json.loads(archive.read(outcome.summary.record_path.name))
    assert names == ["good.png", outcome.summary.record_path.name]
    assert [image["ok"] for image in record["images"]] == [True, False]


def test_cancel_stops_a_job_at_the_next_step(tiny_model, smooth_picture, tmp_path):
    smooth_picture(0).save(tmp_path / "a.png")
    cancelled = threading.Event()
    steps = []

    def step(step, total, value):
        steps.append(step)
        cancelled.set()  # as if Cancel were pressed during the first step

    with pytest.raises(jobs.JobCancelled):
        jobs.run_job(
            [tmp_path / "a.png"],
            tmp_path / "job",
            quick_method(steps=5),
            tiny_model,
            RunOptions(),
            cancelled=cancelled,
            on_step=step,
        )
    assert len(steps) == 1
    with pytest.raises(jobs.JobCancelled):  # pressed while the job was still waiting
        jobs.run_job(
            [tmp_path / "a.png"],
            tmp_path / "job2",
            quick_method(),
            tiny_model,
            RunOptions(),
            cancelled=cancelled,
        )
    assert not (tmp_path / "job2").exists()


def test_the_amplified_view_is_gray_where_nothing_changed_and_saturates_at_eps():
    original = torch.full((3, 2, 2), 0.5)
    protected = original.clone()
    protected[:, 0, 0] += 4 / 255
    protected[:, 0, 1] -= 4 / 255
    shown = views.amplified(original, protected, eps_255=4)
    assert shown.shape == (2, 2, 3) and shown.dtype == np.uint8
    assert shown[0, 0, 0] == 255 and shown[0, 1, 0] == 0 and shown[1, 1, 0] == 128
    assert views.amplification(4) == pytest.approx(127.5 / 4)


def test_the_mimicry_preview_uses_the_same_seed_for_both_images(tiny_model):
    picture = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    first, second = views.mimicry_pair(
        tiny_model, picture, picture, prompt="a photo", strength=0.3, num_inference_steps=4, seed=0
    )
    assert first.shape == (16, 16, 3) and np.array_equal(first, second)
