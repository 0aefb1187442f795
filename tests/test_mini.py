"""The shipped miniatures: they load like any diffusers folder, and protection works on them.

``mini`` is of Stable Diffusion's family (UNet, DDPM, ε-prediction), ``mini-flow`` of SD3's
(MMDiT, 16-channel VAE, flow matching). These tests assert the paper's effect on real (if
miniature) trained models, on the bundled sample images, which were held out from their
training: every protection method moves the SDEdit output further from the clean image's SDEdit
output than uniform random noise of the same L∞ budget does, and moves the encoder's latent
further. Fixed seeds; short PGD runs (the effect only grows with more steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mimicshield import METHODS, Budget, LatentDiffusion, noise_control, protect
from mimicshield.imagefiles import read_image
from mimicshield.metrics import latent_shift
from mimicshield.mimicry import sdedit
from mimicshield.models import MINIATURES
from mimicshield.presets import DEFAULT_SPEED, SPEED_PRESETS

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"
BUDGET = Budget.from_255(eps=16, step_size=2, steps=30)
STRENGTH = 0.3
#: How much further than the noise control each method must push the SDEdit output (ratio of
#: mean squared distances). Measured with these settings on the shipped model: 2.2× (AdvDM) to
#: 8.5× (SDS−) and 11.0× (PCA−), 9.3× for the shipped amortised protector; the --speed presets
#: 8.9× (balanced) and 10.6× (fast); on mini-flow 5.0× (AdvDM−) to 6.3× (SDS−), 7.5× (PhotoGuard,
#: Mist) and 10.9× (PCA−), 7.6× (balanced) and 11.5× (fast). 1.5 leaves room for numerical
#: differences between machines while still failing if a method drifted to the control's level.
MARGIN = 1.5
#: Every method: the seven PGD methods of the paper, PCA− and the shipped amortised protector
#: (trained against ``mini`` only).
PROTECTIONS = ["sds-", "sds+", "sdst", "advdm", "advdm-", "photoguard", "mist", "pca-", "amortised"]
PROTECTIONS_OF = {"mini": PROTECTIONS, "mini-flow": PROTECTIONS[:-1]}
#: What each miniature's folder holds: pipeline class, latent channels, networks.
FOLDERS = {
    "mini": ("StableDiffusionPipeline", 4, ("vae", "unet", "text_encoder")),
    "mini-flow": (
        "StableDiffusion3Pipeline",
        16,
        ("vae", "transformer", "text_encoder", "text_encoder_2"),
    ),
}
#: The --speed presets other than the reference (the frontier's picks, run at their schedules).
FAST_PRESETS = [name for name in SPEED_PRESETS if name != DEFAULT_SPEED]


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def mini(request):
    return LatentDiffusion.from_pretrained(request.param, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def samples():
    return torch.stack([read_image(path).pixels for path in sorted(SAMPLES.glob("*.png"))])


def _mimic(model, images):
    return sdedit(
        model,
        images,
        prompt="a photo",
        strength=STRENGTH,
        num_inference_steps=30,
        generator=torch.Generator().manual_seed(0),
    )


@pytest.fixture(scope="module")
def effects(mini, samples):
    """Method → (mean squared distance of SDEdit outputs to the clean one's, mean ‖Δz‖∞, ‖Δz‖₂)."""
    clean_mimicry = _mimic(mini, samples)
    perturbed = {"noise": noise_control(samples, BUDGET.eps, torch.Generator().manual_seed(0))}
    for name in PROTECTIONS_OF[mini.name]:
        method = METHODS[name](budget=BUDGET)
        perturbed[name] = protect(samples, method, mini, generator=torch.Generator().manual_seed(0))
    for name in FAST_PRESETS:  # at their own schedules, the way --speed runs them
        protection = SPEED_PRESETS[name].build(eps_255=BUDGET.eps * 255)
        perturbed[name] = protect(
            samples, protection, mini, generator=torch.Generator().manual_seed(0)
        )
    results = {}
    for name, images in perturbed.items():
        distance = (_mimic(mini, images) - clean_mimicry).pow(2).mean().item()
        shift = latent_shift(mini, samples, images)
        results[name] = (distance, shift.latent_linf.mean().item(), shift.latent_l2.mean().item())
    return results


def test_shipped_files_load_through_the_ordinary_loader_and_match_the_card(mini):
    folder = MINIATURES[mini.name]
    pipeline, channels, parts = FOLDERS[mini.name]
    card = (folder / "README.md").read_text()
    assert "not" in card.lower() and "stable diffusion" in card.lower()
    files = sorted(folder.rglob("*.safetensors"))
    total = sum(path.stat().st_size for path in files)
    assert len(files) == len(parts) and total <= 40 * 2**20
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    assert mini.latent_channels == channels and mini.vae_scale_factor in (4, 8)
    for part in parts:
        count = sum(p.numel() for p in getattr(mini, part).parameters())
        assert f"{count:,}" in card, f"the card must state {part}'s {count:,} parameters"
    for path in files:
        size = path.stat().st_size
        assert f"{size:,} B" in card, f"the card must state {path.name}'s size, {size:,} B"


def test_mini_name_resolves_everywhere_a_model_is_accepted(mini):
    assert mini.name in MINIATURES and not mini.random_weights
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    decoded = mini.decode(mini.encode(images))
    assert decoded.shape == images.shape


@pytest.mark.parametrize("name", [*PROTECTIONS, *FAST_PRESETS])
def test_protection_moves_sdedit_further_than_random_noise(name, effects, mini):
    if name not in effects:  # the shipped protector was trained against 'mini' only
        with pytest.raises(ValueError, match="trained against"):
            METHODS[name]().check_model(mini)
        return
    distance, noise_distance = effects[name][0], effects["noise"][0]
    assert distance > MARGIN * noise_distance, (
        f"{name}: SDEdit distance {distance:.5f} vs noise control {noise_distance:.5f}"
    )


@pytest.mark.parametrize("name", [*PROTECTIONS, *FAST_PRESETS])
def test_protection_shifts_the_latent_more_than_random_noise(name, effects, mini):
    if name not in effects:  # the shipped protector was trained against 'mini' only
        with pytest.raises(ValueError, match="trained against"):
            METHODS[name]().check_model(mini)
        return
    (_, linf, l2), (_, noise_linf, noise_l2) = effects[name], effects["noise"]
    assert linf > noise_linf, f"{name}: ‖Δz‖∞ {linf:.4f} vs noise control {noise_linf:.4f}"
    assert l2 > noise_l2, f"{name}: ‖Δz‖₂ {l2:.4f} vs noise control {noise_l2:.4f}"
