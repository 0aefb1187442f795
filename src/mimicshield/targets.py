"""Textural targets for PhotoGuard, Mist and SDST: the package's own pattern, gray, or an image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def target_pattern(height: int, width: int) -> torch.Tensor:
    """A high-contrast black-and-white pattern (3, H, W) in {0, 1}.

    The reference code tiles a picture of text; any texture with strong edges at many scales
    serves the same purpose (a latent far from natural images), so we generate one: diagonal
    stripes whose period grows across the image, crossed with a fine checkerboard.
    """
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    period = 4 + 12 * cols / max(width - 1, 1)
    stripes = torch.sin(2 * math.pi * (rows + cols) / period) > 0
    checker = ((rows // 8 + cols // 8) % 2) == 0
    pattern = (stripes ^ checker).float()
    return pattern.expand(3, height, width).clone()


def resolve_target(target: str | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The target as (3, H, W) float32 in [0, 1] at the images' size.

    Args:
        target: "pattern", "gray", or a (3, h, w) / (1, 3, h, w) image in [0, 1] (resized
            bilinearly when its size differs).
        height: image height in pixels.
        width: image width in pixels.

    Raises:
        ValueError: ``target`` is an unknown name or an image without 3 channels.
    """
    if isinstance(target, torch.Tensor):
        image = target.detach().float().reshape(-1, *target.shape[-3:])[:1]
        if image.shape[1] != 3:
            raise ValueError(f"a target image needs 3 channels, got shape {tuple(target.shape)}")
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True)
        return image[0].clamp(0, 1)
    if target == "pattern":
        return target_pattern(height, width)
    if target == "gray":
        return torch.full((3, height, width), 0.5)
    raise ValueError(f"target must be 'pattern', 'gray' or an image tensor, got {target!r}")
