"""Boundary checks shared by the metric modules (messages name expected and actual values)."""

from __future__ import annotations

import torch


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is a non-empty (B, 3, H, W) float tensor in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor, got {shape}")
    if 0 in images.shape:
        raise ValueError(
            f"{name} must hold at least one non-empty image, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:g}, {high:g}]")


def check_pair(images: torch.Tensor, references: torch.Tensor) -> None:
    """Both valid image batches of one shape (a pair metric compares image i with reference i)."""
    check_images(images, "images")
    check_images(references, "references")
    if images.shape != references.shape:
        raise ValueError(
            "images and references must have the same shape, got "
            f"{tuple(images.shape)} and {tuple(references.shape)}"
        )
