"""Exact-gradient checks against independent computations with the raw diffusers parts."""

from __future__ import annotations

import pytest
import torch

from mimicshield.objectives import (
    Conditioning,
    ObjectiveWeights,
    StepNoise,
    score_distillation,
    weighted_objective,
)


def _raw_latents(model, images, posterior_noise):
    """Encoder posterior sample computed straight from the VAE, without the adapter."""
    posterior = model.vae.encode(images * 2 - 1).latent_dist
    return (posterior.mean + posterior.std * posterior_noise) * model.vae.config.scaling_factor


def _setup(model, images, seed=7):
    step = StepNoise.draw(model, images, torch.Generator().manual_seed(seed))
    embeddings = model.embed(["a photo"] * len(images))
    return step, embeddings


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_v_model"])
def test_sds_gradient_is_the_encoder_vjp_of_the_noise_residual(model_fixture, images, request):
    model = request.getfixturevalue(model_fixture)
    step, embeddings = _setup(model, images)
    with model.frozen():
        x = images.clone().requires_grad_(True)
        value = score_distillation(model, model.encode(x, step.posterior_noise), embeddings, step)
        (ours,) = torch.autograd.grad(value, x)

        # Independent: scheduler.add_noise, raw UNet, ε̂ from v̂ by the DDIM identity, then J_Eᵀ r.
        x_ref = images.clone().requires_grad_(True)
        latents = _raw_latents(model, x_ref, step.posterior_noise)
        with torch.no_grad():
            noisy = model.scheduler.add_noise(latents, step.noise, step.timesteps)
            output = model.unet(
                noisy, step.timesteps, encoder_hidden_states=embeddings.hidden_states
            ).sample
            if model.prediction_type == "v_prediction":
                alpha_bar = model.scheduler.alphas_cumprod[step.timesteps].view(-1, 1, 1, 1)
                output = alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * noisy
            residual = output - step.noise
        (reference,) = torch.autograd.grad(latents, x_ref, grad_outputs=residual)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_v_model"])
def test_advdm_gradient_equals_full_autograd_through_the_unet(model_fixture, images, request):
    model = request.getfixturevalue(model_fixture)
    step, embeddings = _setup(model, images)
    with model.frozen():
        x = images.clone().requires_grad_(True)
        value = weighted_objective(
            model, x, ObjectiveWeights(denoising=1.0), Conditioning(embeddings), step
        )
        (ours,) = torch.autograd.grad(value, x)

        x_ref = images.clone().requires_grad_(True)
        latents = _raw_latents(model, x_ref, step.posterior_noise)
        noisy = model.scheduler.add_noise(latents, step.noise, step.timesteps)
        output = model.unet(
            noisy, step.timesteps, encoder_hidden_states=embeddings.hidden_states
        ).sample
        if model.prediction_type == "v_prediction":
            target = model.scheduler.get_velocity(latents, step.noise, step.timesteps)
        else:
            target = step.noise
        loss = torch.nn.functional.mse_loss(output, target)
        (reference,) = torch.autograd.grad(loss, x_ref)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-8)


def test_sds_direction_differs_from_the_full_gradient(tiny_model, images):
    """Sanity: dropping the UNet Jacobian is a real change, so the two checks above are distinct."""
    step, embeddings = _setup(tiny_model, images)
    with tiny_model.frozen():
        grads = []
        for weights in (ObjectiveWeights(denoising=1.0), ObjectiveWeights(score_distillation=1.0)):
            x = images.clone().requires_grad_(True)
            value = weighted_objective(tiny_model, x, weights, Conditioning(embeddings), step)
            grads.append(torch.autograd.grad(value, x)[0])
    assert not torch.allclose(grads[0].sign(), grads[1].sign())


def test_photoguard_gradient_is_the_latent_distance_gradient(tiny_model, images):
    step, embeddings = _setup(tiny_model, images)
    target_latents = torch.randn(
        tiny_model.latent_shape(images), generator=torch.Generator().manual_seed(1)
    )
    with tiny_model.frozen():
        x = images.clone().requires_grad_(True)
        value = weighted_objective(
            tiny_model,
            x,
            ObjectiveWeights(latent_distance=-1.0),
            Conditioning(embeddings, target_latents),
            step,
        )
        (ours,) = torch.autograd.grad(value, x)
        x_ref = images.clone().requires_grad_(True)
        latents = _raw_latents(tiny_model, x_ref, step.posterior_noise)
        (reference,) = torch.autograd.grad(-((latents - target_latents) ** 2).sum(), x_ref)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variance", [1e-8, 1.0])
def test_posterior_collapse_gradient_is_the_kl_gradient_to_a_narrow_gaussian(
    variance, tiny_model, images
):
    """L_PCA is KL(q(z|x) ‖ N(0, v·I)) less a constant: same gradient as torch's own KL."""
    step, embeddings = _setup(tiny_model, images)
    weights = ObjectiveWeights(posterior_collapse=-1.0, posterior_variance=variance)
    with tiny_model.frozen():
        x = images.clone().requires_grad_(True)
        value = weighted_objective(tiny_model, x, weights, Conditioning(embeddings), step)
        (ours,) = torch.autograd.grad(value, x)

        x_ref = images.clone().requires_grad_(True)
        posterior = tiny_model.vae.encode(x_ref * 2 - 1).latent_dist
        prior = torch.distributions.Normal(0.0, variance**0.5)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(posterior.mean, posterior.std), prior
        ).sum()
        (reference,) = torch.autograd.grad(-kl, x_ref)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * reference.abs().max())
