"""Working-resolution protection: protect at the size the mimicking model sees, apply natively.

Fine-tuning and img2img pipelines rarely feed a 6000 × 4000 photograph to the model: they first
resize it so that its short side is 512 or 1024. Optimising at that working resolution costs a
fraction of native protection, and the perturbation is shaped for what the pipeline keeps. The
perturbation δ found there is enlarged to the native size and added to the native image, then
projected back into the ε-ball and [0, 1], so the budget holds on every native pixel.

Resampling, with torch's ``interpolate`` (it stays on the tensors' device and in float, with no
8-bit round trip; its antialiased kernels follow Pillow's):

- down: bicubic with antialiasing, as pipelines resize (Pillow and torchvision antialias), so
  the model is optimised against the image it will be shown, without aliasing;
- up (δ only): bicubic. A ±ε sign pattern enlarged bicubically and shrunk again keeps more of
  itself than one enlarged bilinearly (bench/README.md, "Tiling"); the overshoot is clipped by
  the projection.
"""

from __future__ import annotations

import torch

from .models.ensemble import Surrogate
from .pgd import StepCallback
from .protect import Protection, protect_at_size
from .tensors import check_images, check_mask


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is ``short_side``, aspect kept, never enlarged.

    Args:
        height: native height in pixels.
        width: native width in pixels.
        short_side: pixels of the shorter side at the working resolution (≥ 1).

    Returns:
        The working size, rounded to whole pixels (each side ≥ 1); the native size when the image
        is already no larger than that.
    """
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1:
        raise ValueError(f"short_side must be a whole number of pixels ≥ 1, got {short_side!r}")
    scale = short_side / min(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def protect_at_resolution(
    images: torch.Tensor,
    method: Protection,
    model: Surrogate,
    *,
    short_side: int,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Protect at the working resolution, add the enlarged perturbation to the native images.

    Args:
        images: (B, 3, H, W) float in [0, 1], any H and W. Not modified.
        method: a configured method from ``METHODS`` (or a ``Staged`` run of several); its budget
            applies to every native pixel.
        model: the latent diffusion model, or an ``Ensemble``; its state is restored afterwards.
        short_side: the shorter side, in pixels, at which to protect (e.g. 512 or 1024: the size
            the mimicking pipeline resizes to). Images already that small are protected natively.
        mask: (B or 1, 1, H, W) in [0, 1]: 1 where the perturbation may go, 0 where pixels stay;
            shrunk with the image for the optimisation, applied at native size to the result.
        generator: the only source of randomness; same seed → same output.
        callback: called after each PGD step with (step, steps, objective value).

    Returns:
        (B, 3, H, W) in [0, 1], same dtype and device as ``images``, within ``method.budget`` of
        ``images`` on every pixel (and unchanged where ``mask`` is 0).
    """
    # 1. Check the inputs and choose the working size.
    check_images(images)
    if mask is not None:
        check_mask(mask, images)
    native = images.detach().float()
    size = working_size(*native.shape[-2:], short_side)

    # 2. Protect the shrunk images (the mask shrinks with them, so δ goes where it may), then
    #    enlarge the perturbation, not the image, and project it around the native images.
    protected = protect_at_size(
        native, method, model, size=size, mask=mask, generator=generator, callback=callback
    )
    return protected.to(images.device, images.dtype)
