"""The miniature model's training recipe (training/mini) on a few synthetic images, offline.

A two-step run of every offline stage catches diffusers/transformers API drift before the next
retrain; interrupted-and-resumed runs must equal uninterrupted ones bit for bit.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from training.mini import checkpoint, data, evaluate, paths, prepare, recipe, sources, unet, vae

# Two steps of batch 4 (the VAE's second one on full-size images); held-out figures over two
# timesteps and one SDEdit step.
TINY_VAE = vae.Settings(
    steps=2, batch=4, full_size_fraction=0.5, warmup=1, eval_every=2, save_every=2
)
TINY_UNET = unet.Settings(
    steps=2, batch=4, warmup=1, eval_every=2, save_every=2, eval_timesteps=(100, 700)
)
TINY_EVALUATE = evaluate.Settings(num_inference_steps=4, denoising_timesteps=(100, 700))
# Four steps, interrupted after the checkpoint at step 2; the VAE resumes on full-size images.
RESUMED_VAE = replace(TINY_VAE, steps=4)
RESUMED_UNET = replace(TINY_UNET, steps=4)

TRAIN_CLIPART = 6
# evaluate() lays out its samples as 8 crops per group, so each group holds out 8 crops.
HELD_OUT_CLIPART = 8


def _picture(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A few random colours, bilinearly enlarged to ``size`` (width, height)."""
    channels = len(mode)
    small = np.random.default_rng(seed).integers(0, 256, (3, 4, channels), dtype=np.uint8)
    return Image.fromarray(small, mode).resize(size, Image.Resampling.BILINEAR)


def _keys(prefix: str, group: str, held_out: bool, count: int) -> list[str]:
    """The first ``count`` keys ``prefix<i>.png`` that the recipe's split puts on that side."""
    candidates = (f"{prefix}{i}.png" for i in range(10_000))
    keys = [k for k in candidates if prepare.is_held_out({"key": k, "group": group}) == held_out]
    return keys[:count]


def _synthetic_sources(folder: Path) -> list[dict]:
    """Source records for 14 clip-art files (8 held out), 1 held-out photo and wallpaper.

    Held-out photos and wallpapers give ``prepare.CROPS_HELD_OUT`` crops each: 30 crops in all.
    """
    folder.mkdir(parents=True)
    clipart = _keys("clipart/shape_", "clipart", False, TRAIN_CLIPART)
    clipart += _keys("clipart/shape_", "clipart", True, HELD_OUT_CLIPART)
    records = []
    for i, key in enumerate(clipart):
        path = folder / key.replace("/", "_")
        _picture(i, (40, 30), "RGBA").save(path)
        colour = ("red", "blue", "green")[i % 3]
        records.append(
            dict(path=str(path), key=key, group="clipart", caption=f"clip art of {colour}")
        )
    wallpaper = _keys("synthetic/wallpaper_", "wallpaper", True, 1)[0]
    photo = f"skimage/{sources.HELD_OUT_PHOTOS[0]}"
    for i, (key, group, caption) in enumerate(
        [(photo, "photo", "a photo of a shape"), (wallpaper, "wallpaper", "a wallpaper, blue")]
    ):
        path = folder / key.replace("/", "_")
        _picture(100 + i, (96, 80)).save(path)
        records.append(dict(path=str(path), key=key, group=group, caption=caption))
    return records


def _folders(root: Path, data_folder: Path | None = None) -> paths.Folders:
    """A run's folders under ``root``; ``data_folder`` shares another run's crop cache."""
    return paths.Folders(data_folder or root / "data", root / "runs", root / "shipped")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> recipe.Recipe:
    """Every stage after ``sources``, two training steps each, on the synthetic sources."""
    root = tmp_path_factory.mktemp("recipe")
    run = recipe.Recipe(_folders(root), TINY_VAE, TINY_UNET, TINY_EVALUATE)
    prepare.prepare(run.folders, _synthetic_sources(root / "sources"), workers=1)
    stages = list(recipe.STAGES)
    for stage in stages[stages.index("tokenizer") :]:
        recipe.run(stage, run)
    return run


def test_prepare_caches_crops_split_by_file(trained):
    crops = data.Crops(trained.folders)
    rows = TRAIN_CLIPART + HELD_OUT_CLIPART + 2 * prepare.CROPS_HELD_OUT
    assert crops.images.shape == (rows, 3, paths.RESOLUTION, paths.RESOLUTION)
    assert crops.images.dtype == torch.uint8
    assert len(crops.train_index) == TRAIN_CLIPART
    held_out = {g: len(rows) for g, rows in crops.test_by_group(100).items()}
    assert held_out == {"clipart": HELD_OUT_CLIPART, "photo": 8, "wallpaper": 8}


def test_two_step_run_exports_a_loadable_pipeline(trained):
    folders = trained.folders
    assert checkpoint.load(folders.vae_run / "last.pt")["step"] == TINY_VAE.steps
    state = checkpoint.load(folders.unet_run / "last.pt")
    assert state["step"] == TINY_UNET.steps

    pipe = StableDiffusionPipeline.from_pretrained(
        folders.shipped, safety_checker=None, requires_safety_checker=False
    )
    # The shipped UNet is the EMA one, stored in fp16 and loaded back in float32.
    for name, weight in pipe.unet.state_dict().items():
        assert weight.dtype == torch.float32
        assert torch.equal(weight, state["ema_unet"][name].half().float()), name
    scaling_factor = torch.load(folders.latents, weights_only=False)["scaling_factor"]
    assert pipe.vae.config.scaling_factor == pytest.approx(scaling_factor)
    image = pipe(
        "clip art of red",
        height=paths.RESOLUTION,
        width=paths.RESOLUTION,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, paths.RESOLUTION, paths.RESOLUTION, 3)
    assert np.isfinite(image).all()

    held_out = json.loads((folders.shipped / "held_out.json").read_text())
    assert len(held_out["clipart"]) == HELD_OUT_CLIPART
    assert held_out["photo"] == [f"skimage/{sources.HELD_OUT_PHOTOS[0]}"]
    metrics = json.loads((folders.shipped / "metrics.json").read_text())
    assert set(metrics["vae_psnr_db"]) == set(data.GROUPS)
    assert all(np.isfinite(v) for v in metrics["denoising_ratio"].values())


def _assert_identical(a, b, where: str = "state") -> None:
    """Nested checkpoint states are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_same_training_state(whole: Path, resumed: Path, steps: int) -> None:
    """Both checkpoints reached ``steps`` with identical weights, optimizer and generator."""
    a, b = checkpoint.load(whole), checkpoint.load(resumed)
    assert a["step"] == b["step"] == steps
    a.pop("elapsed"), b.pop("elapsed")  # wall-clock seconds, the one thing allowed to differ
    _assert_identical(a, b)


def test_vae_resume_equals_uninterrupted_run(trained, tmp_path, interrupt_and_resume):
    settings = RESUMED_VAE
    whole, resumed = (_folders(tmp_path / run, trained.folders.data) for run in ("a", "b"))
    vae.train(whole, settings)
    interrupt_and_resume(
        lambda: vae.train(resumed, settings),
        resumed.vae_run / "last.pt",
        settings.save_every,
    )
    _assert_same_training_state(
        whole.vae_run / "last.pt", resumed.vae_run / "last.pt", settings.steps
    )


def test_unet_resume_equals_uninterrupted_run(trained, tmp_path, interrupt_and_resume):
    settings = RESUMED_UNET
    whole, resumed = (_folders(tmp_path / run, trained.folders.data) for run in ("a", "b"))
    for folders in (whole, resumed):  # the tokenizer and latents the UNet stage starts from
        shutil.copytree(trained.folders.tokenizer, folders.tokenizer)
        shutil.copy(trained.folders.latents, folders.latents)
    unet.train(whole, settings)
    interrupt_and_resume(
        lambda: unet.train(resumed, settings),
        resumed.unet_run / "last.pt",
        settings.save_every,
    )
    _assert_same_training_state(
        whole.unet_run / "last.pt", resumed.unet_run / "last.pt", settings.steps
    )


def test_draw_rows_come_from_the_generator():
    index = np.array([3, 5, 7])
    first = data.draw_rows(index, 200, torch.Generator().manual_seed(1))
    again = data.draw_rows(index, 200, torch.Generator().manual_seed(1))
    other = data.draw_rows(index, 200, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (200,) and first.dtype == torch.int64
    assert set(first.tolist()) == {3, 5, 7}  # with replacement, from ``index`` only


def test_sources_download_the_pinned_versions(tmp_path, monkeypatch):
    folders = _folders(tmp_path)
    folders.debs.mkdir(parents=True)
    # A cached deb of another version must not stand in for the pinned one.
    (folders.debs / "openclipart-png_1%3a0.18+dfsg-20_all.deb").touch()
    commands = []

    def fake_run(command, cwd=None, check=False):
        commands.append(command)
        if command[:2] == ["apt-get", "download"]:
            package, version = command[2].split("=")
            (Path(cwd) / f"{package}_{version.replace(':', '%3a')}_all.deb").touch()
        elif command[:2] == ["dpkg", "-x"]:
            Path(command[3]).mkdir()  # like dpkg -x: the parent folder must exist

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    sources.fetch_packages(folders)
    downloads = [c[2] for c in commands if c[0] == "apt-get"]
    assert downloads == [f"{p}={v}" for p, v in sources.PACKAGES.items()]
    unpacked = [Path(c[2]).name for c in commands if c[0] == "dpkg"]
    assert unpacked[0] == "openclipart-png_1%3a0.18+dfsg-19_all.deb"
    assert all((folders.extract / p).is_dir() for p in sources.PACKAGES)
    commands.clear()
    sources.fetch_packages(folders)  # everything is unpacked: nothing to do
    assert commands == []


def test_model_card_lists_the_pinned_versions():
    card = (paths.DEFAULT.shipped / "README.md").read_text()
    for package, version in sources.PACKAGES.items():
        assert f"Debian `{package}` {version}" in card
