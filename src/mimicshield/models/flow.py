"""The flow-matching algebra SD3/3.5 and FLUX.1 share (rectified flow, Esser et al. 2024).

Forward process and target, with σ ∈ (0, 1] the noise level of timestep index t:

    z_t = (1 − σ_t) · z + σ_t · ε,        the denoiser predicts the velocity v = dz_t/dσ = ε − z.

σ_t is diffusers' training schedule: σ = (t + 1) / T, shifted towards noise by the scheduler's
``shift`` s (SD3: σ' = s·σ / (1 + (s − 1)·σ)) or, for FLUX, by a shift that grows with the
number of image tokens (``use_dynamic_shifting``: σ' = e^μ / (e^μ + 1/σ − 1), μ linear in the
token count, the ``mu`` the FLUX pipelines compute). T = 1000 indices, so the same integer
timestep draws as the DDPM families serve.

Score distillation for flow matching (the derivation behind ``predicted_noise``)
-------------------------------------------------------------------------------
The denoising loss is L = ‖v̂(z_t) − (ε − z)‖². Its gradient with respect to the clean latent is

    ∂L/∂z = 2 (v̂ − v)ᵀ [(1 − σ) · ∂v̂/∂z_t + I],

whose first term needs the denoiser's backward pass. Score distillation (Poole et al. 2022)
drops the denoiser's Jacobian, leaving 2 (v̂ − v): the velocity residual. To put every family on
one footing we express it in ε-form, as the DDPM families do (their residual is ε̂ − ε): the
noise the velocity implies is ε̂ = z_t + (1 − σ) · v̂ (solve z_t = (1 − σ) z + σ ε and v = ε − z
for ε), so

    ε̂ − ε = (1 − σ)(z + v̂ − ε) = (1 − σ) · (v̂ − v).

The ε-form residual is thus the velocity residual with the time weight w(σ) = 1 − σ, exactly as
the v-prediction residual is weighted by √ᾱ_t (``StableDiffusion.predicted_noise``); DreamFusion
leaves w free. We keep the ε-form: it is what the score ∇ log p_t(z_t) = −ε̂/σ scales, its weight
is bounded (the unweighted velocity form gives noisy high-σ draws full weight), and the SDS
surrogate ((ε̂ − ε).detach() · z).sum() of ``objectives`` then needs nothing family-specific. Its
image gradient is the encoder's vector-Jacobian product J_Eᵀ((1 − σ)(v̂ − v)): one denoiser
forward, no denoiser backward, as for the DDPM families.
"""

from __future__ import annotations

import math

import torch

from .base import LatentDiffusion


class FlowMatching(LatentDiffusion):
    """Mixin of the flow-matching families: the schedule σ_t and the velocity algebra.

    Subclasses provide ``transformer`` and ``scheduler`` (a FlowMatchEulerDiscreteScheduler) and
    ``predict``.
    """

    #: MMDiT for SD3, FLUX's double/single-stream transformer.
    denoiser_name = "transformer"

    @property
    def prediction_type(self) -> str:
        """Always "flow": the transformer predicts the velocity ε − z."""
        return "flow"

    @property
    def patch_size(self) -> int:
        """Latent cells per token along one side (2 for SD3 and FLUX)."""
        return int(self.transformer.config.get("patch_size") or 2)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of the VAE factor times the patch size (16)."""
        return self.vae_scale_factor * self.patch_size

    def sigma(self, timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """σ_t of integer timesteps (B,) for latents (B, C, h, w), as float64 (B,).

        The scheduler's training σ at index t: (t + 1) / T, then its static or resolution-
        dependent shift (see the module docstring).
        """
        config = self.scheduler.config
        sigma = (timesteps.to(latents.device).double() + 1) / config.num_train_timesteps
        if config.use_dynamic_shifting:
            tokens = latents.shape[-2] * latents.shape[-1] // self.patch_size**2
            mu = self.shift_mu(tokens)
            return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
        shift = config.shift
        return shift * sigma / (1 + (shift - 1) * sigma)

    def shift_mu(self, tokens: int) -> float:
        """μ of the dynamic shift for ``tokens`` image tokens: linear between the config's ends."""
        config = self.scheduler.config
        slope = (config.max_shift - config.base_shift) / (
            config.max_image_seq_len - config.base_image_seq_len
        )
        return config.base_shift + slope * (tokens - config.base_image_seq_len)

    def _sigma_view(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ_t shaped (B, 1, 1, 1) in ``like``'s dtype."""
        shape = (-1,) + (1,) * (like.dim() - 1)
        return self.sigma(timesteps, like).view(shape).to(like.dtype)

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """z_t = (1 − σ_t) · z + σ_t · ε, per image timestep."""
        sigma = self._sigma_view(timesteps, latents)
        return (1 - sigma) * latents + sigma * noise.to(latents)

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The velocity v = ε − z that ``predict`` is trained to output."""
        return noise.to(latents) - latents

    def predicted_noise(
        self, output: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ = z_t + (1 − σ_t) · v̂: so ε̂ − ε = (1 − σ_t)(v̂ − v) (module docstring)."""
        sigma = self._sigma_view(timesteps, noisy_latents)
        return noisy_latents + (1 - sigma) * output.to(noisy_latents)

    def predict_start(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x̂₀ = z_t − σ_t · v̂, in the dtype of ``noisy_latents``."""
        sigma = self.sigma(timesteps, noisy_latents).view((-1,) + (1,) * (noisy_latents.dim() - 1))
        estimate = noisy_latents.double() - sigma * model_output.double()
        return estimate.to(noisy_latents.dtype)
