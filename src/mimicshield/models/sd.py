"""Stable Diffusion 1.x/2.x: a UNet on 4-channel latents, one CLIP text encoder, a DDPM schedule.

The DDPM algebra lives here and SDXL inherits it: z_t = √ᾱ_t · z + √(1 − ᾱ_t) · ε, the UNet
predicting ε or v = √ᾱ·ε − √(1−ᾱ)·z (``prediction_type``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from ..tensors import check_range
from .base import LatentDiffusion, PromptEmbeddings

#: UNet input channels of an SD inpainting model: latent 4 + mask 1 + masked-image latent 4.
INPAINTING_UNET_CHANNELS = 9


@dataclass
class StableDiffusion(LatentDiffusion):
    """Stable Diffusion 1.x/2.x (and their inpainting variants) seen through the adapter.

    Attributes:
        vae, unet, text_encoder, tokenizer, scheduler: the diffusers/transformers parts.
    """

    family = "sd"
    part_names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    network_names = ("vae", "unet", "text_encoder")
    denoiser_name = "unet"
    pipeline_names = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    )

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    _blank_cache: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        # Folders name their sampler (DDIM, PNDM, Euler) as the scheduler; the training
        # schedule, the same β's as a DDPMScheduler, is what protection noises with and what a
        # protector's config digest recorded.
        if type(self.scheduler) is not DDPMScheduler:
            self.scheduler = DDPMScheduler.from_config(self.scheduler.config)

    @property
    def is_inpainting(self) -> bool:
        """True for an SD inpainting model (9-channel UNet: latent, mask, masked-image latent)."""
        return self.unet.config.in_channels == INPAINTING_UNET_CHANNELS

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" or "v_prediction"."""
        return self.scheduler.config.prediction_type

    def clear_caches(self) -> None:
        """Forget cached prompt embeddings and grey-image latents."""
        super().clear_caches()
        self._blank_cache.clear()

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """CLIP's last hidden states (B, 77, D) of prompts padded to 77 tokens, no mask."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return PromptEmbeddings(self.text_encoder(tokens.input_ids.to(self.device))[0])

    # ------------------------------------------------------------- the denoiser

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward diffusion q(z_t | z_0): √ᾱ_t · z + √(1 − ᾱ_t) · ε, per image timestep."""
        alpha, sigma = self._alpha_sigma(timesteps, latents)
        return alpha * latents + sigma * noise.to(latents)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embeddings: PromptEmbeddings
    ) -> torch.Tensor:
        """The UNet's raw output (ε or v, per ``prediction_type``) for (B, C, h, w) latents.

        An inpainting UNet also takes a mask and the masked image's latents; it is given the
        "repaint everything" condition (``repaint_everything``), under which it is a plain
        text-to-image denoiser, so protection, SDEdit and textual inversion treat it like a base
        model. The reference attacked only base models, and its author applied the same global,
        unmasked attack against inpainting (Diff-Protect issue #6), which this matches.
        """
        inputs = noisy_latents
        if self.is_inpainting:
            mask, masked_latents = self.repaint_everything(noisy_latents)
            inputs = torch.cat([noisy_latents, mask, masked_latents], dim=1)
        return self.unet(
            inputs,
            timesteps.to(self.device),
            encoder_hidden_states=embeddings.hidden_states,
            **self._added_conditions(noisy_latents, embeddings),
        ).sample

    def _added_conditions(
        self, noisy_latents: torch.Tensor, embeddings: PromptEmbeddings
    ) -> dict[str, object]:
        """Keyword arguments of the UNet besides the text states (none for SD 1.x/2.x)."""
        return {}

    def repaint_everything(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An inpainting UNet's extra inputs for a mask that covers the whole image.

        What diffusers' inpainting pipeline feeds for an all-white mask: the mask, all ones, and
        the latents of the masked image, which is then all zeros in [-1, 1] (mid grey). The grey
        image is encoded once per size (posterior mean) and kept.

        Args:
            like: (B, C, h, w) latents whose batch, size, device and dtype the inputs take.

        Returns:
            mask (B, 1, h, w) of ones and masked-image latents (B, C, h, w), no gradient.
        """
        batch, _, height, width = like.shape
        key = (height, width, like.device, like.dtype)
        if key not in self._blank_cache:
            factor = self.vae_scale_factor
            grey = torch.full((1, 3, height * factor, width * factor), 0.5, device=self.device)
            with torch.no_grad():
                self._blank_cache[key] = self.encode(grey).to(like.device, like.dtype)
        masked_latents = self._blank_cache[key].expand(batch, -1, -1, -1)
        mask = torch.ones(batch, 1, height, width, device=like.device, dtype=like.dtype)
        return mask, masked_latents

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What ``predict`` is trained to output: ε, or v = √ᾱ·ε − √(1−ᾱ)·z for v-prediction."""
        if self.prediction_type == "epsilon":
            return noise.to(latents)
        if self.prediction_type == "v_prediction":
            alpha, sigma = self._alpha_sigma(timesteps, latents)
            return alpha * noise.to(latents) - sigma * latents
        raise NotImplementedError(f"prediction type '{self.prediction_type}' is not supported")

    def predicted_noise(
        self, output: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Express a ``predict`` output as ε̂ (for v: ε̂ = √ᾱ·v̂ + √(1−ᾱ)·z_t).

        For v-prediction, ε̂ − ε = √ᾱ_t · (v̂ − v): the ε-form score-distillation residual is the
        model's own residual weighted by √ᾱ_t.
        """
        if self.prediction_type == "epsilon":
            return output
        if self.prediction_type == "v_prediction":
            alpha, sigma = self._alpha_sigma(timesteps, noisy_latents)
            return alpha * output + sigma * noisy_latents
        raise NotImplementedError(f"prediction type '{self.prediction_type}' is not supported")

    def predict_start(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x̂₀, the clean latents a ``predict`` output implies: (z_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t.

        lucidrains' ``predict_start_from_noise``, for the model's own prediction type: ε̂ is the
        output itself, or recovered from v by ``predicted_noise``.

        Args:
            noisy_latents: (B, C, h, w) z_t.
            timesteps: (B,) int64, t of each latent.
            model_output: (B, C, h, w) what ``predict`` returned for them.

        Returns:
            (B, C, h, w) in the dtype of ``noisy_latents``.
        """
        noise = self.predicted_noise(model_output, noisy_latents, timesteps)
        alpha_bar = self.alpha_bar(timesteps.to(noisy_latents.device)).double()
        shape = (-1,) + (1,) * (noisy_latents.dim() - 1)
        # Square roots in float64, arithmetic in at least float32, one rounding at the end: for
        # float32 latents, exactly the scalar formula with ᾱ_t as the scheduler stores it.
        dtype = torch.promote_types(noisy_latents.dtype, torch.float32)
        alpha = alpha_bar.sqrt().view(shape).to(dtype)
        sigma = (1 - alpha_bar).sqrt().view(shape).to(dtype)
        return ((noisy_latents - sigma * noise) / alpha).to(noisy_latents.dtype)

    # ------------------------------------------------------------- the schedule

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """ᾱ_t = ∏_{s ≤ t} (1 − β_s), the signal variance left at t (near 1 at 0, near 0 at T − 1).

        Args:
            timesteps: int64 tensor of any shape, each in [0, T).

        Returns:
            The scheduler's float32 ᾱ_t, same shape and device as ``timesteps``.
        """
        return self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps]

    def ddim_timesteps(self, start: int, num_inference_steps: int) -> list[int]:
        """The timesteps a deterministic DDIM run visits from ``start`` down to 0.

        start, start − k, start − 2k, … ≥ 0, with k = T // N the stride of an N-step schedule
        over the T training timesteps (N = ``num_inference_steps``, in [1, T]).
        """
        total = self.num_train_timesteps
        check_range(num_inference_steps, "num_inference_steps", 1, total, whole=True)
        return list(range(start, -1, -(total // num_inference_steps)))

    def _alpha_sigma(
        self, timesteps: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """√ᾱ_t and √(1 − ᾱ_t), shaped (B, 1, 1, 1) to broadcast over ``like``."""
        alphas_cumprod = self.alpha_bar(timesteps.to(like.device))
        shape = (-1,) + (1,) * (like.dim() - 1)
        alpha = alphas_cumprod.sqrt().view(shape).to(like.dtype)
        sigma = (1 - alphas_cumprod).sqrt().view(shape).to(like.dtype)
        return alpha, sigma

    # -------------------------------------------------------------- pipelines

    @classmethod
    def pipeline_classes(cls) -> dict[str, type]:
        """StableDiffusion{,Img2Img,Inpaint}Pipeline."""
        # Imported here: the pipeline modules pull in image processors whose import-time
        # advice about optional packages would reach the shell before it quiets the libraries.
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
        )

        return {
            "text2img": StableDiffusionPipeline,
            "img2img": StableDiffusionImg2ImgPipeline,
            "inpaint": StableDiffusionInpaintPipeline,
        }

    def sampling_scheduler(self) -> DDIMScheduler:
        """DDIM over the model's schedule (the evaluation protocol's sampler)."""
        return DDIMScheduler.from_config(self.scheduler.config)

    @classmethod
    def pipeline_arguments(cls) -> dict[str, object]:
        """No safety checker or feature extractor (research use on the user's own images)."""
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
