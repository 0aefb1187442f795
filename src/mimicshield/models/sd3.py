"""Stable Diffusion 3/3.5: an MMDiT on 16-channel latents, two CLIPs and an optional T5.

Flow matching (``flow``); the prompt is encoded by diffusers' own ``encode_prompt`` (CLIP-L and
CLIP-G penultimate states side by side, zero-padded to the joint width, then the T5 states along
the sequence, zeros when T5 is not loaded; pooled = the two CLIPs' projections side by side).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
)
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    T5EncoderModel,
)

from .base import PromptEmbeddings
from .flow import FlowMatching

#: T5 tokens of an SD3 prompt (the pipeline's default ``max_sequence_length``).
T5_TOKENS = 256


@dataclass
class StableDiffusion3(FlowMatching):
    """Stable Diffusion 3/3.5 seen through the adapter (T5 optional: None leaves it out).

    Attributes:
        vae, text_encoder, text_encoder_2, text_encoder_3, tokenizer, tokenizer_2, tokenizer_3,
        transformer, scheduler: the diffusers/transformers parts.
    """

    family = "sd3"
    part_names = (
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "transformer",
        "scheduler",
    )
    network_names = ("vae", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    pipeline_names = (
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
    )

    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    text_encoder_3: T5EncoderModel | None
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    tokenizer_3: PreTrainedTokenizerBase | None
    transformer: SD3Transformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Diffusers' SD3 ``encode_prompt``: (B, 77 + 256, D) states and (B, P) pooled."""
        states, _, pooled, _ = self.pipeline("text2img").encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=T5_TOKENS,
        )
        return PromptEmbeddings(states, pooled)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embeddings: PromptEmbeddings
    ) -> torch.Tensor:
        """The MMDiT's velocity for (B, 16, h, w) latents, called as the pipelines call it.

        The transformer takes the noise level as σ_t · T (the pipelines' float timestep).
        """
        sigma = self.sigma(timesteps, noisy_latents)
        return self.transformer(
            hidden_states=noisy_latents,
            timestep=(sigma * self.num_train_timesteps).to(self.device, noisy_latents.dtype),
            encoder_hidden_states=embeddings.hidden_states,
            pooled_projections=embeddings.pooled,
            return_dict=False,
        )[0]

    @classmethod
    def pipeline_classes(cls) -> dict[str, type]:
        """StableDiffusion3{,Img2Img,Inpaint}Pipeline."""
        # Imported here: the pipeline modules pull in image processors whose import-time
        # advice about optional packages would reach the shell before it quiets the libraries.
        from diffusers import (
            StableDiffusion3Img2ImgPipeline,
            StableDiffusion3InpaintPipeline,
            StableDiffusion3Pipeline,
        )

        return {
            "text2img": StableDiffusion3Pipeline,
            "img2img": StableDiffusion3Img2ImgPipeline,
            "inpaint": StableDiffusion3InpaintPipeline,
        }
