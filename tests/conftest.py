"""Shared fixtures: tiny models, picture folders, a CLI runner, digests, generators, counters.

The tiny models are saved once per session and loaded back through the real loader; one headless
Chromium serves every browser check of the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from mimicshield import LatentDiffusion
from mimicshield.cli.main import main
from mimicshield.models import PerturbationNetwork, StableDiffusion3, random_weights

torch.set_num_threads(1)  # 2-core machines: one thread per process is fastest and steadiest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny epsilon-prediction Stable Diffusion folder written by save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    LatentDiffusion.random("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_v_model_dir(tiny_model_dir, tmp_path_factory):
    """The same folder with a v-prediction scheduler (like SD 2.x 768)."""
    folder = tmp_path_factory.mktemp("tiny-sd-v") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_model_dir(tmp_path_factory):
    """A tiny SD *inpainting* folder: the tiny config with a 9-channel UNet.

    Written by save_pretrained; the UNet takes latents 4 + mask 1 + masked-image latents 4, like
    stable-diffusion-inpainting.
    """
    folder = tmp_path_factory.mktemp("tiny-sd-inpaint")
    model = LatentDiffusion.random("tiny", seed=1)
    config = random_weights.TINY["unet"] | {"in_channels": 9}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model.unet = UNet2DConditionModel(**config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_model(tiny_inpaint_model_dir):
    return LatentDiffusion.from_pretrained(tiny_inpaint_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")


#: The tiny model of every family besides SD 1.x/2.x ("tiny"), by its RANDOM_MODELS name.
OTHER_FAMILIES = ("tiny-sdxl", "tiny-sd3", "tiny-flux")


@pytest.fixture(scope="session")
def family_model_dirs(tmp_path_factory):
    """Each tiny family written once by save_pretrained: RANDOM_MODELS name → folder."""
    folders = {}
    for name in OTHER_FAMILIES:
        folders[name] = tmp_path_factory.mktemp(name)
        LatentDiffusion.random(name, seed=0).save_pretrained(folders[name])
    return folders


@pytest.fixture(scope="session")
def family_models(family_model_dirs):
    """Each tiny family loaded back through the real loader (fp32, CPU)."""
    return {
        name: LatentDiffusion.from_pretrained(folder, device="cpu", dtype="fp32")
        for name, folder in family_model_dirs.items()
    }


@pytest.fixture(scope="session")
def tiny_v_model(tiny_v_model_dir):
    return LatentDiffusion.from_pretrained(tiny_v_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def build_family_model():
    """build_family_model(name) → a new tiny random model of a family besides SD 1.x/2.x.

    Names: "tiny-sdxl", "tiny-sd3", "tiny-flux" (``RANDOM_MODELS``) and "tiny-sd3-no-t5", SD3
    with its T5 left out (None), as its pipelines allow. Same name, same weights.
    """

    def build(name: str) -> LatentDiffusion:
        if name == "tiny-sd3-no-t5":
            config = dict(random_weights.TINY_SD3)
            del config["text_encoder_3"]
            return StableDiffusion3.from_config(config, name=name)
        return LatentDiffusion.random(name)

    return build


@pytest.fixture(scope="module")
def module_family_model(build_family_model):
    """module_family_model(name) → ``build_family_model(name)``, built once per test module."""
    built: dict[str, LatentDiffusion] = {}

    def get(name: str) -> LatentDiffusion:
        if name not in built:
            built[name] = build_family_model(name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_protector_dir(tiny_model, tmp_path_factory):
    """An untrained amortised protector that names the tiny model, written by save_pretrained.

    Random weights (seeded): it exercises the mechanics of ``METHODS["amortised"]``, which
    only accepts the model its protector records.
    """
    folder = tmp_path_factory.mktemp("tiny-protector")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = PerturbationNetwork(
            block_channels=(4, 8),
            eps_255=8.0,
            surrogate=tiny_model.name,
            surrogate_digest=tiny_model.config_digest(),
            objective="sds-",
        )
    network.save_pretrained(folder)
    return folder


@pytest.fixture
def images():
    """Two smooth-ish random images (2, 3, 16, 20) in [0, 1] with values at both ends."""
    generator = torch.Generator().manual_seed(1)
    base = torch.rand(2, 3, 4, 5, generator=generator)
    upsampled = torch.nn.functional.interpolate(base, size=(16, 20), mode="bilinear")
    upsampled[:, :, 0, 0] = 0.0
    upsampled[:, :, -1, -1] = 1.0
    return upsampled


@pytest.fixture(scope="session")
def smooth_picture():
    """picture(seed, size=(20, 16)) → a PIL RGB image: 4×5 random colours, bilinearly enlarged."""

    def picture(seed: int, size: tuple[int, int] = (20, 16)) -> Image.Image:
        small = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
        return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)

    return picture


@pytest.fixture
def image_folder(tmp_path, smooth_picture):
    """image_folder(*names, size=(20, 16), folder="in") → a folder of smooth pictures.

    The i-th name gets ``smooth_picture(i, size)``, saved in the format its suffix names (JPEG
    at quality 95).
    """

    def make(*names: str, size: tuple[int, int] = (20, 16), folder: str = "in"):
        path = tmp_path / folder
        path.mkdir(exist_ok=True)
        for seed, name in enumerate(names):
            smooth_picture(seed, size).save(path / name, quality=95)
        return path

    return make


@pytest.fixture(scope="session")
def digests():
    """digests(folder) → {file name: SHA-256 of its bytes}, to show that files were not touched."""

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    return digest


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args) → the exit code of ``mimicshield ARGS`` run in this process."""

    def run(*args) -> int:
        return main([str(arg) for arg in args])

    return run


@pytest.fixture(scope="session")
def seeded():
    """seeded(seed=0) → a fresh CPU generator with that seed."""

    def generator(seed: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    return generator


@pytest.fixture(scope="session")
def count_unet_calls():
    """``with count_unet_calls(model) as calls:`` counts UNet forwards by autograd mode.

    ``calls`` is ``{"with_grad": n, "no_grad": m}``; the hook is removed when the block ends.
    """

    @contextlib.contextmanager
    def counting(model):
        calls = {"with_grad": 0, "no_grad": 0}

        def hook(module, args, output):
            calls["with_grad" if torch.is_grad_enabled() else "no_grad"] += 1

        handle = model.unet.register_forward_hook(hook)
        try:
            yield calls
        finally:
            handle.remove()

    return counting


@pytest.fixture(scope="session")
def protect_args():
    """protect_args(*args, model_dir) → ``mimicshield protect`` arguments for a quick CPU run.

    Two PGD steps of 3/255 within 6/255 on the given model; ``args`` are the inputs, ``-o`` and
    any other options.
    """

    def arguments(*args, model_dir) -> list[str]:
        quick = ("--steps", "2", "--eps", "6", "--step-size", "3")
        return ["protect", *map(str, args), "--model", str(model_dir), "--device", "cpu", *quick]

    return arguments


@pytest.fixture(scope="session")
def png_declaring():
    """png_declaring(path, width, height) → a tiny PNG whose header declares that size.

    The pixel data is junk: the file tests what happens before anything is decoded (size
    limits, decompression bombs) without allocating the image.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    def write(path, width: int, height: int):
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\0" * 64)
        png = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)
        return path

    return write


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """The one headless Chromium of the session (Debian's, driven by Playwright).

    Started by the first test that asks for it; each test opens its own context (cookies,
    storage and downloads of their own) and closes it.
    """
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e .[test]"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        )
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def evaluation_folder(tmp_path):
    """evaluation_folder(methods, images, variants, size=(12, 10)) → (folder, rows).

    What ``mimicshield evaluate`` leaves for the human study, without running it: a random PNG
    per clean image (``clean/<image>.png``), protected image (``protected/<method>/``) and
    unpurified SDEdit output of victim ``tiny`` (``mimicry/tiny/<method>/none/<variant>/``),
    and the result rows that name them (one visibility row per method and image, one mimicry
    row per method, variant and image). Every file's pixels differ.
    """

    def make(methods, images, variants, size=(12, 10)):
        folder = tmp_path / "evaluation"
        rng = np.random.default_rng(0)

        def picture(relative: str) -> None:
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)

        rows = []
        for image in images:
            picture(f"clean/{image}.png")
            for method in methods:
                picture(f"protected/{method}/{image}.png")
                rows.append(
                    {"method": method, "purifier": "none", "scenario": "visibility",
                     "variant": "protected", "victim": "", "baseline": "clean", "image": image}
                )  # fmt: skip
                for variant in variants:
                    picture(f"mimicry/tiny/{method}/none/{variant}/{image}.png")
                    rows.append(
                        {"method": method, "purifier": "none", "scenario": "sdedit",
                         "variant": variant, "victim": "tiny", "baseline": "purified-clean",
                         "image": image}
                    )  # fmt: skip
        return folder, rows

    return make


class Interrupted(Exception):
    """Stands for a kill right after a training checkpoint was written."""


@pytest.fixture
def interrupt_and_resume(monkeypatch):
    """``run(train, last, step)``: ``train()`` as if killed just after its first checkpoint.

    The first call stops right after ``training.mini.checkpoint.save_training`` wrote ``last``
    (which must then hold ``step``); the second call resumes from it and runs to the end.
    """
    from training.mini import checkpoint

    def run(train, last: Path, step: int) -> None:
        save = checkpoint.save_training

        def save_then_stop(*args, **kwargs):
            save(*args, **kwargs)
            raise Interrupted

        with monkeypatch.context() as patch:
            patch.setattr(checkpoint, "save_training", save_then_stop)
            with pytest.raises(Interrupted):
                train()
        assert checkpoint.load(last)["step"] == step
        train()

    return run
