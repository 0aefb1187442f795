"""Metrics: pure functions on (B, 3, H, W) images in [0, 1] (DESIGN §4)."""

from __future__ import annotations

from .image_quality import psnr, ssim

__all__ = ["psnr", "ssim"]
