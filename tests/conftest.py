"""Shared fixtures: tiny models saved once per session and loaded back through the real loader."""

from __future__ import annotations

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield import LatentDiffusion

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
def tiny_model(tiny_model_dir):
    return LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_v_model(tiny_v_model_dir):
    return LatentDiffusion.from_pretrained(tiny_v_model_dir, device="cpu", dtype="fp32")


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
