"""Every model family behind the one adapter: loading, the flow-matching algebra, exact gradients.

The references here are computed from the raw diffusers parts and the schedulers' own tables
(``FlowMatchEulerDiscreteScheduler.sigmas``, diffusers' ``calculate_shift``/``time_shift``,
``DDPMScheduler.add_noise``), never from the adapter's formulas.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES
from flow_reference import raw_velocity, scheduler_sigma
from safetensors.torch import save_file

from mimicshield import LatentDiffusion
from mimicshield.models import (
    Flux,
    ModelUnavailableError,
    StableDiffusion3,
    StableDiffusionXL,
    load_model,
)
from mimicshield.models.loading import single_file_type
from mimicshield.objectives import (
    Conditioning,
    ObjectiveWeights,
    StepNoise,
    score_distillation,
    weighted_objective,
)

FAMILY_CLASSES = {"tiny-sdxl": StableDiffusionXL, "tiny-sd3": StableDiffusion3, "tiny-flux": Flux}
FLOW = ("tiny-sd3", "tiny-flux")


@pytest.fixture
def pictures():
    """Two random pictures (2, 3, 32, 32) in [0, 1]: one 16-pixel multiple for every family."""
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _draw(model, images, seed=7):
    step = StepNoise.draw(model, images, torch.Generator().manual_seed(seed))
    return step, model.embed(["a photo"] * len(images))


def _raw_latents(model, images, posterior_noise):
    """(μ + σ·noise − shift) · scale straight from the VAE, without the adapter."""
    config = model.vae.config
    posterior = model.vae.encode(images * 2 - 1).latent_dist
    sample = posterior.mean + posterior.std * posterior_noise
    return (sample - (config.get("shift_factor") or 0.0)) * config.scaling_factor


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", sorted(FAMILY_CLASSES))
def test_family_is_read_from_model_index_and_round_trips(name, family_model_dirs, family_models):
    model = family_models[name]
    assert type(model) is FAMILY_CLASSES[name]
    assert model.describe()["family"] == model.family
    original = LatentDiffusion.random(name, seed=0)
    assert model.config_digest() == original.config_digest()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    step, embeddings = _draw(model, images)
    with torch.no_grad():
        latents = model.encode(images, step.posterior_noise)
        noisy = model.add_noise(latents, step.noise, step.timesteps)
        loaded = model.predict(noisy, step.timesteps, embeddings)
        again = original.predict(noisy, step.timesteps, original.embed(["a photo"]))
    torch.testing.assert_close(loaded, again)


def test_an_unsupported_pipeline_class_is_named(family_model_dirs, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(family_model_dirs["tiny-sd3"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps(index | {"_class_name": "KandinskyV22Pipeline"})
    )
    with pytest.raises(ModelUnavailableError, match="KandinskyV22Pipeline.*does not support"):
        LatentDiffusion.from_pretrained(folder, device="cpu")


def test_sdxl_keeps_a_force_upcast_vae_in_float32_under_float16():
    model = LatentDiffusion.random("tiny-sdxl").to("cpu", torch.float16)
    assert model.vae.config.force_upcast
    assert model.vae.dtype == torch.float32 and model.dtype == torch.float16


def test_sd3_runs_without_t5_with_zeros_in_its_place(family_models, pictures):
    full = family_models["tiny-sd3"]
    model = dataclasses.replace(full, text_encoder_3=None, tokenizer_3=None, _prompt_cache={})
    with_t5, without = full.embed(["a photo"]), model.embed(["a photo"])
    assert without.hidden_states.shape == with_t5.hidden_states.shape
    clip_tokens = full.tokenizer.model_max_length
    assert torch.count_nonzero(without.hidden_states[:, clip_tokens:]) == 0
    assert torch.equal(without.pooled, with_t5.pooled)
    step, embeddings = _draw(model, pictures)
    value = weighted_objective(
        model, pictures, ObjectiveWeights(score_distillation=1.0), Conditioning(embeddings), step
    )
    assert torch.isfinite(value)


# ------------------------------------------------------------ single files


def test_single_file_family_is_read_from_its_keys(tmp_path):
    def checkpoint(keys):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.safetensors"
        save_file({key: torch.zeros(shape) for key, shape in keys.items()}, str(path))
        return path

    sd = checkpoint({CHECKPOINT_KEY_NAMES["v1"]: (320, 640, 1, 1)})
    xl = checkpoint({CHECKPOINT_KEY_NAMES["xl_base"]: (1,)})
    flux = checkpoint({"double_blocks.0.img_attn.norm.key_norm.scale": (1,)})
    assert single_file_type(sd) == "v1"
    assert single_file_type(xl) == "xl_base"
    assert single_file_type(flux) == "flux-schnell"


def test_single_file_without_its_configuration_offline_is_one_sentence(tmp_path):
    path = tmp_path / "someone-sdxl-finetune.safetensors"
    save_file({CHECKPOINT_KEY_NAMES["xl_base"]: torch.zeros(1)}, str(path))
    with pytest.raises(ModelUnavailableError) as caught:
        load_model(path, device="cpu")
    message = str(caught.value)
    assert "single-file sdxl checkpoint" in message
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "--model-config" in message and "\n" not in message


def test_single_file_that_is_not_a_checkpoint_is_named(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelUnavailableError, match="broken.safetensors.*not a readable"):
        load_model(broken, device="cpu")
    other = tmp_path / "other.safetensors"
    save_file({"some.other.weight": torch.zeros(1)}, str(other))
    with pytest.raises(ModelUnavailableError, match="not a text-to-image model"):
        load_model(other, device="cpu")


# ------------------------------------------------------ the flow algebra


@pytest.mark.parametrize("name", FLOW)
def test_sigma_is_the_schedulers_own_training_sigma(name, family_models):
    model = family_models[name]
    timesteps = torch.tensor([0, 1, 299, 500, 998, 999])
    latents = torch.zeros(6, 16, 16, 16)
    expected = scheduler_sigma(model, timesteps, latents.shape)
    torch.testing.assert_close(model.sigma(timesteps, latents), expected.double())
    assert model.sigma(torch.tensor([999]), latents[:1]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", FLOW)
def test_flow_residual_is_the_weighted_velocity_residual(name, family_models, pictures):
    """ε̂ − ε = (1 − σ)(v̂ − v) = (1 − σ) · ∇_z ½‖v̂ − (ε − z)‖² with the denoiser held fixed."""
    model = family_models[name]
    step, embeddings = _draw(model, pictures)
    with torch.no_grad():
        latents = model.encode(pictures, step.posterior_noise)
        noisy = model.add_noise(latents, step.noise, step.timesteps)
        velocity = model.predict(noisy, step.timesteps, embeddings)
        residual = model.predicted_noise(velocity, noisy, step.timesteps) - step.noise
    z = latents.clone().requires_grad_(True)
    held = 0.5 * (velocity - (step.noise - z)).pow(2).sum()
    (jacobian_dropped,) = torch.autograd.grad(held, z)
    sigma = scheduler_sigma(model, step.timesteps, latents.shape).view(-1, 1, 1, 1).float()
    torch.testing.assert_close(residual, (1 - sigma) * jacobian_dropped, rtol=1e-4, atol=1e-5)
    estimate = model.predict_start(noisy, step.timesteps, velocity)
    torch.testing.assert_close(estimate, noisy - sigma * velocity, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ exact gradients


@pytest.mark.parametrize("name", FLOW)
def test_flow_sds_gradient_is_the_encoder_vjp_of_the_residual(name, family_models, pictures):
    model = family_models[name]
    step, embeddings = _draw(model, pictures)
    with model.frozen():
        x = pictures.clone().requires_grad_(True)
        value = score_distillation(model, model.encode(x, step.posterior_noise), embeddings, step)
        (ours,) = torch.autograd.grad(value, x)

        x_ref = pictures.clone().requires_grad_(True)
        latents = _raw_latents(model, x_ref, step.posterior_noise)
        with torch.no_grad():
            sigma = scheduler_sigma(model, step.timesteps, latents.shape).view(-1, 1, 1, 1).float()
            noisy = (1 - sigma) * latents + sigma * step.noise
            velocity = raw_velocity(model, noisy, sigma.flatten(), embeddings)
            residual = (1 - sigma) * (velocity - (step.noise - latents))
        (reference,) = torch.autograd.grad(latents, x_ref, grad_outputs=residual)
    # σ in float64 (ours) vs the scheduler's float32 table: a few 1e-6 apart.
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FLOW)
def test_flow_denoising_gradient_equals_full_autograd(name, family_models, pictures):
    model = family_models[name]
    step, embeddings = _draw(model, pictures)
    with model.frozen():
        x = pictures.clone().requires_grad_(True)
        value = weighted_objective(
            model, x, ObjectiveWeights(denoising=1.0), Conditioning(embeddings), step
        )
        (ours,) = torch.autograd.grad(value, x)

        x_ref = pictures.clone().requires_grad_(True)
        latents = _raw_latents(model, x_ref, step.posterior_noise)
        sigma = scheduler_sigma(model, step.timesteps, latents.shape).view(-1, 1, 1, 1).float()
        noisy = (1 - sigma) * latents + sigma * step.noise
        velocity = raw_velocity(model, noisy, sigma.flatten(), embeddings)
        loss = (velocity - (step.noise - latents)).pow(2).mean()
        (reference,) = torch.autograd.grad(loss, x_ref)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_sdxl_gradients_match_the_raw_unet_with_size_conditioning(family_models, pictures):
    model = family_models["tiny-sdxl"]
    step, embeddings = _draw(model, pictures)
    with model.frozen():
        x = pictures.clone().requires_grad_(True)
        value = weighted_objective(
            model,
            x,
            ObjectiveWeights(denoising=1.0, score_distillation=0.5),
            Conditioning(embeddings),
            step,
        )
        (ours,) = torch.autograd.grad(value, x)

        x_ref = pictures.clone().requires_grad_(True)
        latents = _raw_latents(model, x_ref, step.posterior_noise)
        noisy = model.scheduler.add_noise(latents, step.noise, step.timesteps)
        conditions = {
            "text_embeds": embeddings.pooled,
            "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).expand(2, -1),
        }
        output = model.unet(
            noisy,
            step.timesteps,
            encoder_hidden_states=embeddings.hidden_states,
            added_cond_kwargs=conditions,
        ).sample
        loss = (output - step.noise).pow(2).mean()
        surrogate = ((output.detach() - step.noise) * latents).sum()
        (reference,) = torch.autograd.grad(loss + 0.5 * surrogate, x_ref)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_sd3_saved_without_t5_loads_back_without_it(tmp_path):
    model = LatentDiffusion.random("tiny-sd3").with_parts(text_encoder_3=None, tokenizer_3=None)
    model.save_pretrained(tmp_path)
    loaded = LatentDiffusion.from_pretrained(tmp_path, device="cpu")
    assert loaded.text_encoder_3 is None and loaded.tokenizer_3 is None
    torch.testing.assert_close(
        loaded.embed(["a photo"]).hidden_states, model.embed(["a photo"]).hidden_states
    )


def test_sdxl_loaded_in_float16_keeps_its_vae_in_float32(family_model_dirs):
    model = LatentDiffusion.from_pretrained(
        family_model_dirs["tiny-sdxl"], device="cpu", dtype="fp16"
    )
    assert model.dtype == torch.float16 and model.vae.dtype == torch.float32
