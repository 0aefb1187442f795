"""Independent references for the flow-matching families, shared by their tests.

σ comes from diffusers' scheduler table and shift helpers, the velocity from a raw transformer
call made the way the family's pipeline makes it: never from the adapter's own formulas.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift


def scheduler_sigma(model, timesteps: torch.Tensor, latent_shape) -> torch.Tensor:
    """σ of integer training timesteps, float64, from diffusers' scheduler.

    The scheduler's table at construction runs from σ = 1 down: index i holds (T − i) / T, so
    timestep t is entry T − 1 − t; statically shifted there (SD3), or shifted with the μ the
    FLUX pipelines compute from the token count (``use_dynamic_shifting``).
    """
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
    config = scheduler.config
    sigma = scheduler.sigmas[config.num_train_timesteps - 1 - torch.as_tensor(timesteps)]
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
    return sigma.double()


def raw_velocity(model, noisy: torch.Tensor, sigma, embeddings) -> torch.Tensor:
    """The transformer's velocity for (B, C, h, w) latents at σ (a number or (B,)).

    Called as the family's pipeline calls it: SD3 with timestep σ·1000, FLUX with packed latents,
    position ids, timestep σ and its embedded guidance.
    """
    batch, channels, height, width = noisy.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(batch)
    if model.family == "sd3":
        return model.transformer(
            hidden_states=noisy,
            timestep=sigma * 1000,
            encoder_hidden_states=embeddings.hidden_states,
            pooled_projections=embeddings.pooled,
        ).sample
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    velocity = model.transformer(
        hidden_states=packed,
        timestep=sigma,
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
