"""Inpainting: repaint the masked part of an image under a prompt, keep the rest exactly.

The family's diffusers inpainting pipeline (``StableDiffusionInpaintPipeline``, the SDXL, SD3
and FLUX ones likewise) covers both cases of DESIGN §4:

- an SD inpainting model (9-channel UNet: latent, mask and masked-image latent), the protocol's;
- a base model (4-channel UNet), by latent blending: after each DDIM step the known region's
  latent is replaced with the clean image latent noised to the next timestep, so only the masked
  region is generated (as in Blended Latent Diffusion, Avrahami et al. 2023; diffusers' own
  behaviour for 4-channel UNets).

The pipeline starts from pure noise (strength 1). Afterwards the pixels outside the mask are
pasted back from the input, so they are exactly the input's.
"""

from __future__ import annotations

import logging
import math

import torch

from ..models import LatentDiffusion
from ..tensors import check_guidance, check_images, check_mask, check_positive, pad_to_multiple
from ._common import guidance_arguments, to_caller

logger = logging.getLogger(__name__)


def is_inpainting_model(model: LatentDiffusion) -> bool:
    """True for an SD inpainting model (9-channel UNet); False for a base one (latent blending)."""
    return model.is_inpainting


def inpaint(
    model: LatentDiffusion,
    images: torch.Tensor,
    mask: torch.Tensor,
    *,
    prompt: str,
    num_inference_steps: int = 100,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Repaint the masked region of ``images``; pixels outside the mask are returned unchanged.

    Args:
        model: an SD inpainting model (9-channel UNet) or a base model (latent blending); its
            parts are used in place and its state left as it was.
        images: (B, 3, H, W) float in [0, 1], any H and W (edge-padded to the model's size
            multiple and cropped back). Not modified.
        mask: (1 or B, 1, H, W) in [0, 1]; values >= 0.5 (white) are repainted, the rest kept.
            Binarised as diffusers does, so "kept" is unambiguous.
        prompt: text condition, the same for every image.
        num_inference_steps: DDIM steps (100 in the protocol).
        guidance_scale: classifier-free guidance (7.5 in the protocol; the empty prompt is the
            unconditional one).
        generator: the only randomness (starting noise, posterior samples); same seed → same
            output.

    Returns:
        (B, 3, H, W) in [0, 1], on the device and in the dtype of ``images``; equal to ``images``
        wherever the mask is < 0.5.
    """
    # 1. Check the inputs; one binary mask per image.
    check_images(images)
    check_mask(mask, images)
    check_positive(num_inference_steps, "num_inference_steps")
    check_guidance(guidance_scale)
    repaint = (mask >= 0.5).expand(len(images), -1, -1, -1).to(images.device)
    logger.debug(
        "inpainting with %s", "the inpainting UNet" if is_inpainting_model(model) else "blending"
    )

    # 2. Run the inpainting pipeline on the same parts, padded to the size multiple (and to 8,
    #    which SDXL's inpainting pipeline asks of every model, whatever its VAE's factor).
    factor = math.lcm(model.size_multiple, 8)
    padded = pad_to_multiple(images.detach().float(), factor)
    padded_mask = pad_to_multiple(repaint.float(), factor)
    pipeline = model.pipeline("inpaint")
    with model.frozen():
        generated = pipeline(
            prompt=[prompt] * len(images),
            image=padded.to(model.device),
            mask_image=padded_mask.to(model.device),
            height=padded.shape[-2],
            width=padded.shape[-1],
            strength=1.0,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="pt",
            **guidance_arguments(model, guidance_scale, len(images)),
        ).images

    # 3. Crop back and paste the kept pixels from the input, bit for bit.
    return torch.where(repaint, to_caller(generated, images), images.detach())
