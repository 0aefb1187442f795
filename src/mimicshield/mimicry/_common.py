"""What the mimicry scenarios share: pipelines over the loaded parts, outputs back to the caller."""

from __future__ import annotations

from typing import TypeVar

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from ..models import LatentDiffusion
from ..tensors import check_guidance, check_positive

PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)


def build_pipeline(
    pipeline_class: type[PipelineT], model: LatentDiffusion, **overrides: object
) -> PipelineT:
    """A diffusers pipeline over ``model``'s already loaded parts, with a fresh DDIM scheduler.

    Nothing is loaded or copied: the pipeline references the same networks. The scheduler is a
    new object (pipelines set its timesteps) built from the model's config, so the shared one is
    never mutated. No safety checker (research use on the user's own images) and no progress bar
    (the library does not print). ``overrides`` replaces parts, e.g. an extended tokenizer.
    """
    parts = {
        "vae": model.vae,
        "text_encoder": model.text_encoder,
        "tokenizer": model.tokenizer,
        "unet": model.unet,
        "scheduler": DDIMScheduler.from_config(model.scheduler.config),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
        **overrides,
    }
    pipeline = pipeline_class(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def to_caller(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pipeline output (B, 3, H', W') → cropped to ``like``'s H, W, on its device and dtype."""
    height, width = like.shape[-2:]
    return output[..., :height, :width].clamp(0, 1).to(like.device, like.dtype)


def text_to_image(
    model: LatentDiffusion,
    prompt: str,
    *,
    num_images: int,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    **overrides: object,
) -> torch.Tensor:
    """Generate ``num_images`` images of ``prompt`` from scratch with ``model``'s parts.

    Text-to-image DDIM with classifier-free guidance (the empty prompt as unconditional). The
    pipeline needs sizes divisible by 8 and by the VAE's factor; other sizes are generated
    rounded up and cropped. ``overrides`` replaces pipeline parts (an extended tokenizer, a
    fine-tuned UNet). Call it inside ``model.frozen()``.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    check_positive(num_images, "num_images")
    check_positive(height, "height")
    check_positive(width, "width")
    check_positive(num_inference_steps, "num_inference_steps")
    check_guidance(guidance_scale)
    multiple = max(8, model.vae_scale_factor)
    size = (height + -height % multiple, width + -width % multiple)
    inputs = {
        "prompt": [prompt] * num_images,
        "height": size[0],
        "width": size[1],
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "generator": generator,
        "output_type": "pt",
    }
    pipeline_class = StableDiffusionPipeline
    if model.is_inpainting:
        # An inpainting model generates from scratch when told to repaint a whole grey image.
        pipeline_class = StableDiffusionInpaintPipeline
        grey = torch.full((num_images, 3, *size), 0.5, device=model.device)
        inputs |= {"image": grey, "mask_image": torch.ones_like(grey[:, :1]), "strength": 1.0}
    images = build_pipeline(pipeline_class, model, **overrides)(**inputs).images
    return images[..., :height, :width].float().clamp(0, 1)
