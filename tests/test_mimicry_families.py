"""Mimicry on every family: SDXL, SD3 (with and without T5) and FLUX through their pipelines.

SDEdit, one-step reconstruction and inpainting; LoRA and DreamBooth on the denoiser; SDXL
textual inversion; an evaluation with a flow-matching surrogate.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

from mimicshield import LatentDiffusion
from mimicshield.mimicry import (
    center_mask,
    inpaint,
    one_step_reconstruction,
    sdedit,
)
from mimicshield.models import StableDiffusion3
from mimicshield.models.random_weights import TINY_SD3

#: The tiny models of the families besides SD 1.x/2.x (whose own tests are test_mimicry.py's).
FAMILIES = ("tiny-sdxl", "tiny-sd3", "tiny-sd3-no-t5", "tiny-flux")
FLOW_FAMILIES = ("tiny-sd3", "tiny-flux")


def _build(name: str) -> LatentDiffusion:
    if name == "tiny-sd3-no-t5":  # SD3 with T5 left out, as its pipelines allow
        config = {part: value for part, value in TINY_SD3.items() if part != "text_encoder_3"}
        return StableDiffusion3.from_config(config, name=name)
    return LatentDiffusion.random(name)


@pytest.fixture(scope="module")
def models():
    """models(name) → a tiny model of this module's own (built on first use)."""
    built: dict[str, LatentDiffusion] = {}

    def get(name: str) -> LatentDiffusion:
        if name not in built:
            built[name] = _build(name)
        return built[name]

    return get


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
def test_sdedit_shape_range_seed_and_nothing_changed(models, name, odd_images, seeded):
    model = models(name)
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
    models, name, images, strength, steps, expected
):
    """The flow pipelines round s·N up on their own; SDEdit runs ⌊s·N⌋ on every family."""
    model = models(name)
    calls = []
    handle = model.denoiser.register_forward_hook(lambda *args: calls.append(1))
    try:
        sdedit(model, images, prompt="a photo", strength=strength, num_inference_steps=steps)
    finally:
        handle.remove()
    assert len(calls) == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_one_step_reconstruction_shape_range_and_seed(models, name, odd_images, seeded):
    model = models(name)
    run = {"prompt": "a photo", "strength": 0.3}
    first = one_step_reconstruction(model, odd_images, **run, generator=seeded(0))
    assert first.shape == odd_images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(
        first, one_step_reconstruction(model, odd_images, **run, generator=seeded(0))
    )
    assert not torch.equal(
        first, one_step_reconstruction(model, odd_images, **run, generator=seeded(1))
    )


def _scheduler_sigma(model, timestep: int, latent_shape) -> float:
    """σ of a training timestep index from diffusers' scheduler (not the adapter's formula).

    The scheduler's table at construction runs from σ = 1 down: index i holds (T − i) / T, so
    timestep t is entry T − 1 − t; statically shifted there (SD3), or shifted with the μ the
    FLUX pipelines compute from the token count (``use_dynamic_shifting``).
    """
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
    config = scheduler.config
    sigma = scheduler.sigmas[config.num_train_timesteps - 1 - timestep]
    if config.use_dynamic_shifting:
        tokens = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
        mu = calculate_shift(
            tokens,
            config.base_image_seq_len,
            config.max_image_seq_len,
            config.base_shift,
            config.max_shift,
        )
        sigma = scheduler.time_shift(mu, 1.0, sigma)
    return float(sigma)


def _raw_velocity(model, noisy, sigma, embeddings):
    """The transformer called directly, as the family's pipeline calls it at noise level σ."""
    batch, channels, height, width = noisy.shape
    if model.family == "sd3":
        timestep = torch.full((batch,), sigma * 1000)
        return model.transformer(
            hidden_states=noisy,
            timestep=timestep,
            encoder_hidden_states=embeddings.hidden_states,
            pooled_projections=embeddings.pooled,
        ).sample
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    velocity = model.transformer(
        hidden_states=packed,
        timestep=torch.full((batch,), sigma),
        guidance=torch.full((batch,), model.guidance_scale),
        pooled_projections=embeddings.pooled,
        encoder_hidden_states=embeddings.hidden_states,
        txt_ids=torch.zeros(embeddings.hidden_states.shape[1], 3),
        img_ids=FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, "cpu", noisy.dtype
        ),
    ).sample
    factor = model.vae_scale_factor
    return FluxPipeline._unpack_latents(velocity, height * factor, width * factor, factor)


@pytest.mark.parametrize("name", FLOW_FAMILIES)
def test_flow_one_step_reconstruction_is_z_t_minus_sigma_times_velocity(
    models, name, images, seeded
):
    """x̂₀ = z_t − σ·v̂ with σ from the scheduler's own table and v̂ from the raw transformer."""
    model = models(name)
    result = one_step_reconstruction(
        model, images, prompt="a photo", strength=0.3, generator=seeded(3)
    )

    generator = seeded(3)  # the same draws in the same order: posterior sample, then noise
    shape = model.latent_shape(images)  # 16 × 20 images: no padding
    posterior_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    sigma = _scheduler_sigma(model, 299, shape)  # round(0.3 · 1000) − 1
    with torch.no_grad():
        latents = model.encode(images, posterior_noise)
        noisy = (1 - sigma) * latents + sigma * noise
        velocity = _raw_velocity(model, noisy, sigma, model.embed(["a photo"] * len(images)))
        expected = model.decode(noisy - sigma * velocity)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FLOW_FAMILIES)
def test_reference_conventions_are_refused_for_flow_families(models, name, images):
    model = models(name)
    for mimic in (sdedit, one_step_reconstruction):
        with pytest.raises(ValueError, match=f"flow-matching model '{name}' \\({model.family}\\)"):
            mimic(model, images, prompt="a photo", strength=0.3, reference_conventions=True)


# -------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("name", FAMILIES)
def test_inpaint_keeps_the_pixels_outside_the_mask_and_is_seeded(models, name, odd_images, seeded):
    model = models(name)
    mask = center_mask(*odd_images.shape[-2:])
    run = {"prompt": "a photo", "num_inference_steps": 2, "guidance_scale": 2.0}
    first = inpaint(model, odd_images, mask, **run, generator=seeded(0))
    keep = (mask < 0.5).expand_as(odd_images)
    assert first.shape == odd_images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first[keep], odd_images[keep])
    assert not torch.equal(first[~keep], odd_images[~keep])
    assert torch.equal(first, inpaint(model, odd_images, mask, **run, generator=seeded(0)))
