"""What the mimicry scenarios share: text-to-image, outputs back to the caller, guidance.

Pipelines come from the model (``LatentDiffusion.pipeline``); the guidance arguments differ by
family (FLUX.1's guidance is embedded, not classifier-free).
"""

from __future__ import annotations

import torch

from ..models import LatentDiffusion
from ..tensors import check_guidance, check_positive


def guidance_arguments(model: LatentDiffusion, guidance_scale: float, batch: int) -> dict:
    """A pipeline call's arguments for classifier-free guidance of weight ``guidance_scale``.

    For every family but FLUX this is the pipelines' ``guidance_scale``. FLUX.1's
    ``guidance_scale`` is the transformer's embedded guidance (the model's own, 3.5 by default);
    classifier-free guidance there is ``true_cfg_scale`` against an empty negative prompt.
    """
    if model.family != "flux":
        return {"guidance_scale": guidance_scale}
    arguments = {"guidance_scale": model.guidance_scale, "true_cfg_scale": guidance_scale}
    if guidance_scale > 1:
        arguments["negative_prompt"] = [""] * batch
    return arguments


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

    The family's text-to-image pipeline (DDIM, or the flow families' Euler sampler) with
    classifier-free guidance (the empty prompt as unconditional). The pipelines need sizes
    divisible by 8 and by the model's size multiple; other sizes are generated rounded up and
    cropped. ``overrides`` replaces pipeline parts (extended tokenizers, a fine-tuned denoiser).
    Call it inside ``model.frozen()``.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    check_positive(num_images, "num_images")
    check_positive(height, "height")
    check_positive(width, "width")
    check_positive(num_inference_steps, "num_inference_steps")
    check_guidance(guidance_scale)
    multiple = max(8, model.size_multiple)
    size = (height + -height % multiple, width + -width % multiple)
    inputs = {
        "prompt": [prompt] * num_images,
        "height": size[0],
        "width": size[1],
        "num_inference_steps": num_inference_steps,
        "generator": generator,
        "output_type": "pt",
        **guidance_arguments(model, guidance_scale, num_images),
    }
    task = "text2img"
    if model.is_inpainting:
        # An inpainting model generates from scratch when told to repaint a whole grey image.
        task = "inpaint"
        grey = torch.full((num_images, 3, *size), 0.5, device=model.device)
        inputs |= {"image": grey, "mask_image": torch.ones_like(grey[:, :1]), "strength": 1.0}
    images = model.pipeline(task, **overrides)(**inputs).images
    return images[..., :height, :width].float().clamp(0, 1)
