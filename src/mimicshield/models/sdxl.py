"""Stable Diffusion XL: SD's UNet and DDPM schedule with two CLIPs and size conditioning.

The UNet also takes the pooled prompt (from the second CLIP's projection) and six "time ids":
the original size, the crop's top-left corner and the target size, in pixels. Protection and
mimicry condition on the image's own size, uncropped, as the pipelines do by default. The
prompt is encoded by diffusers' own ``encode_prompt`` (both CLIPs' penultimate states side by
side). SDXL's released VAE overflows in float16 (its config says ``force_upcast``), so in
float16 the VAE stays in float32, as the pipelines do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from .base import LatentDiffusion, PromptEmbeddings
from .sd import StableDiffusion


@dataclass
class StableDiffusionXL(StableDiffusion):
    """Stable Diffusion XL (base and inpainting) seen through the adapter.

    Attributes:
        vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler: the
            diffusers/transformers parts.
    """

    family = "sdxl"
    part_names = (
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "unet",
        "scheduler",
    )
    network_names = ("vae", "unet", "text_encoder", "text_encoder_2")
    pipeline_names = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )

    text_encoder_2: CLIPTextModelWithProjection
    tokenizer_2: CLIPTokenizer

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentDiffusion:
        """Move all networks; in float16 a ``force_upcast`` VAE stays in float32."""
        super().to(device, dtype)
        if dtype == torch.float16 and self.vae_float32_in_float16:
            self.vae.to(dtype=torch.float32)
        return self

    @property
    def vae_float32_in_float16(self) -> bool:
        """True when the VAE's config says ``force_upcast``, as SDXL 1.0's does."""
        return bool(self.vae.config.get("force_upcast"))

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Diffusers' SDXL ``encode_prompt``: (B, 77, 2048) states and (B, 1280) pooled."""
        states, _, pooled, _ = self.pipeline("text2img").encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            do_classifier_free_guidance=False,
        )
        return PromptEmbeddings(states, pooled)

    def _added_conditions(
        self, noisy_latents: torch.Tensor, embeddings: PromptEmbeddings
    ) -> dict[str, object]:
        """The pooled prompt and the time ids (size, crop (0, 0), size) of the latents' image."""
        batch, _, height, width = noisy_latents.shape
        size = [height * self.vae_scale_factor, width * self.vae_scale_factor]
        time_ids = torch.tensor([size + [0, 0] + size], device=self.device)
        return {
            "added_cond_kwargs": {
                "text_embeds": embeddings.pooled,
                "time_ids": time_ids.to(noisy_latents.dtype).expand(batch, -1),
            }
        }

    @classmethod
    def pipeline_classes(cls) -> dict[str, type]:
        """StableDiffusionXL{,Img2Img,Inpaint}Pipeline."""
        # Imported here: the pipeline modules pull in image processors whose import-time
        # advice about optional packages would reach the shell before it quiets the libraries.
        from diffusers import (
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLInpaintPipeline,
            StableDiffusionXLPipeline,
        )

        return {
            "text2img": StableDiffusionXLPipeline,
            "img2img": StableDiffusionXLImg2ImgPipeline,
            "inpaint": StableDiffusionXLInpaintPipeline,
        }

    @classmethod
    def pipeline_arguments(cls) -> dict[str, object]:
        """No invisible watermark (it needs an extra package and alters the evaluated pixels)."""
        return {"add_watermarker": False}
