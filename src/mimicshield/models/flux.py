"""FLUX.1: a double/single-stream transformer on packed 16-channel latents, CLIP-L and T5.

Flow matching with a resolution-dependent shift (``flow``). Latents stay (B, 16, h, w) outside
this module; ``predict`` packs them into 2×2 patches ((B, h·w/4, 64) tokens with their position
ids), as the FLUX pipelines do, and unpacks the velocity. FLUX.1-dev is guidance-distilled: the
guidance scale is an input of the transformer (``guidance_scale``, the pipelines' default 3.5),
not classifier-free guidance; FLUX.1-schnell has no guidance input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    T5EncoderModel,
)

from .base import PromptEmbeddings
from .flow import FlowMatching

#: T5 tokens of a FLUX prompt (FLUX.1-dev pipelines' default; schnell uses 256).
T5_TOKENS = 512
#: The embedded guidance of the FLUX pipelines' default call.
DEFAULT_GUIDANCE = 3.5


@dataclass
class Flux(FlowMatching):
    """FLUX.1 seen through the adapter.

    Attributes:
        vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, transformer, scheduler: the
            diffusers/transformers parts.
        guidance_scale: the embedded guidance the transformer is given (dev models only).
    """

    family = "flux"
    part_names = (
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "transformer",
        "scheduler",
    )
    network_names = ("vae", "transformer", "text_encoder", "text_encoder_2")
    pipeline_names = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")

    text_encoder: CLIPTextModel
    text_encoder_2: T5EncoderModel
    tokenizer: CLIPTokenizer
    tokenizer_2: PreTrainedTokenizerBase
    transformer: FluxTransformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler
    guidance_scale: float = field(default=DEFAULT_GUIDANCE, kw_only=True)

    @property
    def patch_size(self) -> int:
        """2: the pipelines pack 2×2 latent cells into one token (the transformer's own is 1)."""
        return 2

    @property
    def native_resolution(self) -> int:
        """1024 for FLUX.1: the pipelines' default of 128 latent cells a side."""
        return 128 * self.vae_scale_factor

    def describe(self) -> dict[str, object]:
        """The base facts and the embedded guidance."""
        return super().describe() | {"guidance_scale": self.guidance_scale}

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Diffusers' FLUX ``encode_prompt``: T5 states (B, 512, 4096), CLIP pooled (B, 768)."""
        states, pooled, _ = self.pipeline("text2img").encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            max_sequence_length=min(T5_TOKENS, self.tokenizer_2.model_max_length),
        )
        return PromptEmbeddings(states, pooled)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embeddings: PromptEmbeddings
    ) -> torch.Tensor:
        """The transformer's velocity for (B, 16, h, w) latents (h, w even), packed as FLUX does.

        The transformer takes the noise level as σ_t itself (the pipelines pass t / 1000).
        """
        from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

        batch, channels, height, width = noisy_latents.shape
        packed = FluxPipeline._pack_latents(noisy_latents, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, self.device, noisy_latents.dtype
        )
        text_ids = torch.zeros(
            embeddings.hidden_states.shape[1], 3, device=self.device, dtype=noisy_latents.dtype
        )
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance_scale, device=self.device)
        velocity = self.transformer(
            hidden_states=packed,
            timestep=self.sigma(timesteps, noisy_latents).to(self.device, noisy_latents.dtype),
            guidance=guidance,
            pooled_projections=embeddings.pooled,
            encoder_hidden_states=embeddings.hidden_states,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        factor = self.vae_scale_factor
        return FluxPipeline._unpack_latents(velocity, height * factor, width * factor, factor)

    @classmethod
    def pipeline_classes(cls) -> dict[str, type]:
        """Flux{,Img2Img,Inpaint}Pipeline."""
        # Imported here: the pipeline modules pull in image processors whose import-time
        # advice about optional packages would reach the shell before it quiets the libraries.
        from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline

        return {
            "text2img": FluxPipeline,
            "img2img": FluxImg2ImgPipeline,
            "inpaint": FluxInpaintPipeline,
        }
