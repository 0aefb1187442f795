"""Mimicry on every family: SDXL, SD3 (with and without T5) and FLUX through their pipelines.

SDEdit, one-step reconstruction and inpainting, and an evaluation with a flow-matching surrogate
(fine-tuning on every family: test_finetune_families.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flow_reference import raw_velocity, scheduler_sigma
from PIL import Image

from mimicshield.cli.main import main
from mimicshield.mimicry import center_mask, inpaint, one_step_reconstruction, sdedit
from mimicshield.purify import diffusion_purify

#: The tiny models of the families besides SD 1.x/2.x (whose own tests are test_mimicry.py's).
FAMILIES = ("tiny-sdxl", "tiny-sd3", "tiny-sd3-no-t5", "tiny-flux")
FLOW_FAMILIES = ("tiny-sd3", "tiny-flux")


@pytest.fixture
def odd_images(seeded):
    """Two images (2, 3, 18, 22): sides that are no multiple of a flow model's 4 (tiny) or 16."""
    images = torch.rand(2, 3, 18, 22, generator=seeded(5))
    images[:, :, 0, 0], images[:, :, -1, -1] = 0.0, 1.0
    return images


def _weights(model):
    return {name: value.clone() for name, value in model.denoiser.state_dict().items()}


# ---------------------------------------------------------------------- SDEdit and one step


@pytest.mark.parametrize("name", FAMILIES)
def test_sdedit_shape_range_seed_and_nothing_changed(module_family_model, name, odd_images, seeded):
    model = module_family_model(name)
    original, weights = odd_images.clone(), _weights(model)
    run = {"prompt": "a photo", "strength": 0.5, "num_inference_steps": 4}
    first = sdedit(model, odd_images, **run, generator=seeded(0))
    assert first.shape == odd_images.shape and first.dtype == odd_images.dtype
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, sdedit(model, odd_images, **run, generator=seeded(0)))
    assert not torch.equal(first, sdedit(model, odd_images, **run, generator=seeded(1)))
    assert torch.equal(odd_images, original)
    assert all(torch.equal(value, _weights(model)[key]) for key, value in weights.items())


@pytest.mark.parametrize("name", FLOW_FAMILIES)
@pytest.mark.parametrize(
    ("strength", "steps", "expected"), [(0.3, 10, 3), (1.0, 4, 4), (0.57, 100, 57)]
)
def test_flow_sdedit_runs_the_floor_of_strength_times_steps(
    module_family_model, name, images, strength, steps, expected
):
    """The flow pipelines round s·N up on their own; SDEdit runs ⌊s·N⌋ on every family."""
    model = module_family_model(name)
    calls = []
    handle = model.denoiser.register_forward_hook(lambda *args: calls.append(1))
    try:
        sdedit(model, images, prompt="a photo", strength=strength, num_inference_steps=steps)
    finally:
        handle.remove()
    assert len(calls) == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_one_step_reconstruction_shape_range_and_seed(
    module_family_model, name, odd_images, seeded
):
    model = module_family_model(name)
    run = {"prompt": "a photo", "strength": 0.3}
    first = one_step_reconstruction(model, odd_images, **run, generator=seeded(0))
    assert first.shape == odd_images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(
        first, one_step_reconstruction(model, odd_images, **run, generator=seeded(0))
    )
    assert not torch.equal(
        first, one_step_reconstruction(model, odd_images, **run, generator=seeded(1))
    )


@pytest.mark.parametrize("name", FLOW_FAMILIES)
def test_flow_one_step_reconstruction_is_z_t_minus_sigma_times_velocity(
    module_family_model, name, images, seeded
):
    """x̂₀ = z_t − σ·v̂ with σ from the scheduler's own table and v̂ from the raw transformer."""
    model = module_family_model(name)
    result = one_step_reconstruction(
        model, images, prompt="a photo", strength=0.3, generator=seeded(3)
    )

    generator = seeded(3)  # the same draws in the same order: posterior sample, then noise
    shape = model.latent_shape(images)  # 16 × 20 images: no padding
    posterior_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    sigma = float(scheduler_sigma(model, 299, shape))  # round(0.3 · 1000) − 1
    with torch.no_grad():
        latents = model.encode(images, posterior_noise)
        noisy = (1 - sigma) * latents + sigma * noise
        velocity = raw_velocity(model, noisy, sigma, model.embed(["a photo"] * len(images)))
        expected = model.decode(noisy - sigma * velocity)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FLOW_FAMILIES)
def test_reference_conventions_are_refused_for_flow_families(module_family_model, name, images):
    model = module_family_model(name)
    for mimic in (sdedit, one_step_reconstruction):
        with pytest.raises(ValueError, match=f"flow-matching model '{name}' \\({model.family}\\)"):
            mimic(model, images, prompt="a photo", strength=0.3, reference_conventions=True)


# -------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("name", FAMILIES)
def test_inpaint_keeps_the_pixels_outside_the_mask_and_is_seeded(
    module_family_model, name, odd_images, seeded
):
    model = module_family_model(name)
    mask = center_mask(*odd_images.shape[-2:])
    run = {"prompt": "a photo", "num_inference_steps": 2, "guidance_scale": 2.0}
    first = inpaint(model, odd_images, mask, **run, generator=seeded(0))
    keep = (mask < 0.5).expand_as(odd_images)
    assert first.shape == odd_images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first[keep], odd_images[keep])
    assert not torch.equal(first[~keep], odd_images[~keep])
    assert torch.equal(first, inpaint(model, odd_images, mask, **run, generator=seeded(0)))


# -------------------------------------------------------------------------------- evaluation


@pytest.fixture
def pictures(tmp_path):
    """A folder of two smooth 32 × 32 PNGs."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(2):
        small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR).save(
            folder / f"{seed}.png"
        )
    return folder


def test_evaluate_with_a_flow_surrogate_and_victims_of_other_families(pictures, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate", str(pictures), "-o", str(out), "--model", "tiny-sd3", "--device", "cpu",
            "--victim", "tiny-flux,tiny-sdxl", "--methods", "sds-", "--steps", "2", "--eps", "8",
            "--scenarios", "sdedit", "--strengths", "0.5", "--num-inference-steps", "2",
            "--metrics", "psnr",
        ]
    )  # fmt: skip
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    mimicry = {(r["victim"], r["variant"], r["image"]) for r in rows if r["scenario"] == "sdedit"}
    victims, variants = ("tiny-flux", "tiny-sdxl"), ("sdedit@0.5", "onestep@0.5")
    assert {(v, s, i) for v in victims for s in variants for i in ("0", "1")} <= mimicry
    for image in ("0", "1"):  # protected against the SD3 surrogate within the budget, as saved
        clean = np.asarray(Image.open(pictures / f"{image}.png"), dtype=int)
        protected = np.asarray(Image.open(out / "protected" / "sds-" / f"{image}.png"), dtype=int)
        assert 0 < np.abs(protected - clean).max() <= 8
    outputs = sorted((out / "mimicry").glob("*/*/none/*/*.png"))
    assert len(outputs) == 2 * 2 * 2 * 2  # victims × (clean, sds-) × variants × images
    assert {Image.open(path).size for path in outputs} == {(32, 32)}


def test_evaluate_refuses_textual_inversion_on_a_flow_victim_before_any_work(
    pictures, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate", str(pictures), "-o", str(out), "--model", "tiny-sdxl", "--device", "cpu",
            "--victim", "tiny-flux", "--methods", "sds-", "--scenarios", "sdedit,textual-inversion",
            "--metrics", "psnr",
        ]
    )  # fmt: skip
    assert code == 1
    assert "textual inversion is not available for 'tiny-flux' (flux)" in capsys.readouterr().err
    assert not (out / "protected").exists()


# ---------------------------------------------------------------------- diffusion purification


@pytest.mark.parametrize("name", FLOW_FAMILIES)
def test_diffusion_purification_of_a_flow_model_is_euler_from_sigma_t_to_zero(
    module_family_model, name, images, seeded
):
    """Euler steps z ← z + (σ' − σ)·v̂ from σ_t to 0, σ from the scheduler's table, stride 20."""
    model = module_family_model(name)
    purified = diffusion_purify(
        images, model, strength=0.05, num_inference_steps=50, generator=seeded(2)
    )
    with torch.no_grad():
        latents = model.encode(images)  # the posterior mean
        noise = torch.randn(latents.shape, generator=seeded(2))
        sigmas = [float(scheduler_sigma(model, t, latents.shape)) for t in (49, 29, 9)] + [0.0]
        latents = (1 - sigmas[0]) * latents + sigmas[0] * noise
        embeddings = model.embed(["", ""])
        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            velocity = raw_velocity(model, latents, sigma, embeddings)
            latents = latents + (following - sigma) * velocity
        expected = model.decode(latents)
    torch.testing.assert_close(purified, expected, atol=1e-5, rtol=1e-5)
