"""The web pages: mimicshield serve's page, then the human-study page, in Debian's Chromium.

First the served page's plain parts without a browser, then the page itself; last, the
human-study page opened from disk.

The served page's checks share one server (``mimicshield serve`` in a subprocess, on the tiny
random model, module-scoped to keep time down); every browser check uses the session's one
headless Chromium (``browser`` in conftest.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield import METHODS, Budget, RunOptions
from mimicshield.evaluation import (
    StudyOptions,
    answer_files,
    read_answers,
    read_study,
    write_study,
)
from mimicshield.evaluation.human_study import ANSWER_FIELDS, ANSWERS_FIELDS
from mimicshield.web import jobs, presets, views

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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


def test_serve_without_the_extra_says_how_to_install_it(run_cli, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert run_cli("serve") == 2
    assert "pip install 'mimicshield[web]'" in capsys.readouterr().err


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


def test_cancel_stops_the_running_job_and_those_queued_behind_it_only():
    flags = jobs.Cancellations()
    flags.begin("s")
    flags.begin("s")  # Protect pressed again while the first job waits or runs
    flags.begin("other")
    first = flags.claim("s")
    flags.cancel("s")
    second = flags.claim("s")
    assert first.is_set() and second.is_set(), "Cancel reaches the running and the queued job"
    assert not flags.claim("other").is_set(), "another session's job is not touched"
    flags.finish("s", first)
    flags.finish("s", second)
    flags.begin("s")
    assert not flags.claim("s").is_set(), "a job queued after Cancel starts afresh"


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


# ---------------------------------------------------------------- in a real browser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """``mimicshield serve`` on the tiny model: yields (URL, its temporary folder).

    Afterwards it stops the server and checks that the folder went with it.
    """
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e .[web]")
    port = _free_port()
    command = [sys.executable, "-m", "mimicshield", "serve", "--model", str(tiny_model_dir)]
    command += ["--device", "cpu", "--dtype", "fp32", "--port", str(port), "--max-files", "3"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    lines, url, root = [], None, None
    deadline = time.monotonic() + 120
    while (url is None or root is None) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "the page is at " in line:
            url = line.split("the page is at ")[1].split()[0]
        if "files of this server: " in line:
            root = Path(line.split("files of this server: ")[1].split()[0])
    if url is None or root is None:
        process.kill()
        pytest.fail("the server did not start:\n" + "".join(lines))
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
    assert url.startswith("http://127.0.0.1:")  # localhost unless told otherwise
    yield url, root
    process.terminate()
    assert process.wait(timeout=30) == 0
    assert not root.exists(), "the server left its temporary files behind"


@pytest.fixture(scope="module")
def page(browser, server):
    """One page of the session's Chromium for every check of the served page."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server[0])
    yield page
    context.close()


def unnamed_controls(page) -> list[str]:
    """Controls in Chromium's accessibility tree that a screen reader could not name."""
    roles = {"button", "textbox", "spinbutton", "slider", "combobox", "checkbox", "radio",
             "link", "listbox", "searchbox", "switch", "tab", "menuitem"}  # fmt: skip
    session = page.context.new_cdp_session(page)
    nodes = session.send("Accessibility.getFullAXTree")["nodes"]
    missing = []
    for node in nodes:
        role = node.get("role", {}).get("value")
        name = node.get("name", {}).get("value", "")
        if role in roles and not node.get("ignored") and not str(name).strip():
            html = session.send("DOM.getOuterHTML", {"backendNodeId": node["backendDOMNodeId"]})
            missing.append(f"{role}: {html['outerHTML'][:300]}")
    return missing


def test_protect_in_the_browser(page, server, smooth_picture, tmp_path, capsys):
    # 1. Advanced opened first: Gradio renders its fields when it opens and sets their preset
    #    values a moment later, so a value typed at once can be overwritten (retried below).
    page.get_by_text("Advanced").click()

    # 2. Two files dropped at once: a picture and a corrupt file.
    smooth_picture(0, size=(24, 16)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    page.locator("#uploads input[type=file]").set_input_files(
        [tmp_path / "good.png", tmp_path / "broken.png"]
    )
    page.locator('#uploads [aria-label="broken.png"]').wait_for()

    # A budget of 1 level and 2 steps of 1 level: only the projection keeps it within ε.
    for selector, value in (("#eps input", "1"), ("#steps input", "2")):
        field = page.locator(selector)
        for _ in range(10):
            field.fill(value)
            field.press("Tab")  # Gradio takes a number field's value when it loses focus
            page.wait_for_timeout(300)
            if field.input_value() == value:
                break
        assert field.input_value() == value

    # 3. The keyboard reaches Protect and Enter starts it.
    page.locator("#prompt textarea, #prompt input").first.focus()
    for _ in range(30):
        if page.evaluate("document.activeElement && document.activeElement.id") == "protect":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "protect", "Tab never reached Protect"
    page.keyboard.press("Enter")

    # 4. The good file is protected, the bad one named.
    status = page.locator("#status")
    status.get_by_text("Protected 1 of 2 images").wait_for(timeout=120_000)
    assert "broken.png" in status.inner_text() and "Could not protect" in status.inner_text()
    assert "(ε 1/255, 2 steps)" in status.inner_text(), status.inner_text()

    # 5. The download, checked again on the bytes the browser saved.
    with page.expect_download() as download:
        page.locator('#downloads a[download="good.png"]').click()
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    assert np.abs(levels(saved) - levels(tmp_path / "good.png")).max() <= 1
    zip_link = page.locator(f'#downloads a[download="{jobs.ZIP_NAME}"]')
    archive = tmp_path / "downloaded.zip"
    archive.write_bytes(page.request.get(zip_link.get_attribute("href")).body())
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    assert "good.png" in names and any(name.endswith(".json") for name in names)

    # 6. Before/after, the amplified change and what a mimic gets.
    assert page.locator("#pair img").count() == 2
    page.locator("#perturbation img").first.wait_for()
    page.locator("#mimic").click()
    page.locator("#mimic-original img").first.wait_for(timeout=120_000)
    page.locator("#mimic-protected img").first.wait_for()

    # 7. Every control has a name a screen reader can say.
    assert unnamed_controls(page) == []

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "web-page.png"
    page.screenshot(path=screenshot, full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot of the page: {screenshot}")


def test_too_many_files_are_refused_in_the_page(page, server, smooth_picture, tmp_path):
    names = [f"picture-{index}.png" for index in range(4)]  # the server takes 3
    for index, name in enumerate(names):
        smooth_picture(index).save(tmp_path / name)
    page.reload()
    page.locator("#uploads input[type=file]").set_input_files([tmp_path / n for n in names])
    page.locator(f'#uploads [aria-label="{names[-1]}"]').wait_for()
    page.locator("#protect").click()
    page.locator("#status").get_by_text("4 files were given").wait_for()
    assert page.locator("#downloads a").count() == 0


# ---------------------------------------------------------------- the human-study page


def _mulberry32(seed: int):
    """The page's seeded generator, written again in Python (unsigned 32-bit arithmetic)."""
    state = seed & 0xFFFFFFFF

    def imul(a: int, b: int) -> int:
        return (a * b) & 0xFFFFFFFF

    def draw() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = imul(state ^ (state >> 15), state | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF
        return (t ^ (t >> 14)) / 4294967296

    return draw


def _order_and_sides(seed: int, trial_ids: list[str]) -> tuple[list[str], list[str]]:
    """The trial order and the option shown left, as the page derives them from ``seed``."""
    draw, order = _mulberry32(seed), list(trial_ids)
    for i in range(len(order) - 1, 0, -1):
        j = int(draw() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order, ["a" if draw() < 0.5 else "b" for _ in order]


def test_the_human_study_page_in_the_browser(browser, evaluation_folder, tmp_path, capsys):
    folder, rows = evaluation_folder(("sds-", "advdm", "noise"), ["cat", "dog"], ["sdedit@0.3"])
    key = write_study(folder, rows, StudyOptions()).study  # 12 trials: 3 pairs × 2 images × 2
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    requests, errors = [], []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(20_000)
    ready = page.locator("#choose-left:not([disabled])")
    sides = []

    def answer(side: str, keyboard: bool = False) -> None:
        ready.wait_for()
        if keyboard:
            page.keyboard.press("ArrowLeft" if side == "left" else "ArrowRight")
        else:
            page.locator(f"#choose-{side}").click()
        sides.append(side)

    try:
        # 1. Opened from disk; no start without a participant id.
        page.goto((folder / "human-study.html").as_uri())
        page.locator("#begin").click()
        assert "participant id" in page.locator("#start-error").inner_text()
        page.locator("#participant").fill("P 01")
        page.locator("#participant").press("Enter")

        # 2. Three answers, by mouse and by keyboard; the pictures are on screen, sharp.
        answer("left")
        answer("right", keyboard=True)
        answer("left")
        ready.wait_for()
        assert page.locator("#progress-text").inner_text() == "Pair 4 of 12"
        # Enlarged by a whole factor (pixels stay sharp), every picture within the window.
        shown = page.evaluate(
            "[...document.querySelectorAll('#pair img')].filter((i) => i.offsetParent)"
            ".map((i) => [i.naturalWidth, i.getBoundingClientRect().toJSON()])"
        )
        assert len(shown) in (2, 3)
        for natural, box in shown:
            assert natural == 12 and box["width"] % 12 == 0 and box["width"] >= 12 * 20
            assert box["left"] >= 0 and box["right"] <= 1280 and box["bottom"] <= 900
        assert unnamed_controls(page) == []
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "human-study.png")

        # 3. A reload resumes where it stopped, for the same participant.
        page.reload()
        ready.wait_for()
        assert page.locator("#progress-text").inner_text() == "Pair 4 of 12"
        assert page.locator("#start").is_hidden() and "P 01" in page.locator("#who").inner_text()

        # 4. The rest, the end, and the answers downloaded as the browser saves them.
        for index in range(9):
            answer("right" if index % 3 else "left")
        page.locator("#done").wait_for()
        with page.expect_download() as download:
            page.locator("#download").click()
        assert download.value.suggested_filename == f"answers-{key.id[:8]}-P_01.json"
        saved = tmp_path / "answers" / download.value.suggested_filename
        download.value.save_as(saved)

        # 5. A new participant starts afresh once the dialog is confirmed.
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#new-participant").click()
        page.locator("#start").wait_for()
        page.reload()
        page.locator("#start").wait_for()
    finally:
        context.close()

    assert errors == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests
    document = json.loads(saved.read_text())
    assert tuple(document) == ANSWERS_FIELDS
    assert (document["study"], document["participant"], document["trials"]) == (key.id, "P 01", 12)
    assert document["complete"] is True and isinstance(document["seed"], int)
    answers = document["answers"]
    assert [a["side"] for a in answers] == sides and [a["position"] for a in answers] == [
        *range(12)
    ]
    trials = key.by_id()
    for item in answers:
        assert tuple(item) == ANSWER_FIELDS and item["kind"] == trials[item["trial"]].kind
        other = "b" if item["left"] == "a" else "a"
        assert item["choice"] == (item["left"] if item["side"] == "left" else other)
        assert isinstance(item["response_ms"], int) and item["response_ms"] >= 0
    # The seed stored with the answers reproduces this participant's order and sides.
    order, left = _order_and_sides(document["seed"], [trial.id for trial in key.trials])
    assert [a["trial"] for a in answers] == order and [a["left"] for a in answers] == left
    # And the fold reads the file the browser saved.
    collected = read_answers(answer_files([saved.parent]), read_study(folder))
    assert collected.refused == [] and len(collected.sessions[0].answers) == 12
    with capsys.disabled():
        print(f"\nscreenshot of the human-study page: {ARTIFACTS / 'human-study.png'}")
