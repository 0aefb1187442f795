"""Encoder vulnerability: how far a small pixel change moves the latent (DESIGN §1, §4).

The paper's finding is that the VAE encoder, not the denoiser, is the weak point: a protection
of ‖Δx‖∞ = 16/255 moves the latent far more than an equally small natural change would. This
module reports the latent move per image together with the pixel move that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import LatentDiffusion
from ..models.ensemble import check_single_model
from ..tensors import check_pair, pad_to_multiple


@dataclass(frozen=True)
class LatentShift:
    """Per-image shifts, each a (B,) float64 tensor on the CPU.

    Attributes:
        latent_linf: ‖z(protected) − z(clean)‖∞ in scaled latent units (what the UNet sees).
        pixel_linf: ‖protected − clean‖∞ on the [0, 1] scale (×255 for 8-bit levels).
        ratio: latent_linf / pixel_linf; NaN where the images are identical (0/0).
        latent_l2: ‖z(protected) − z(clean)‖₂ over the whole latent, for reference.
    """

    latent_linf: torch.Tensor
    pixel_linf: torch.Tensor
    ratio: torch.Tensor
    latent_l2: torch.Tensor

    def as_columns(self) -> dict[str, torch.Tensor]:
        """The four shifts by name (``latent_linf``, ``pixel_linf``, ``ratio``, ``latent_l2``)."""
        return {
            "latent_linf": self.latent_linf,
            "pixel_linf": self.pixel_linf,
            "ratio": self.ratio,
            "latent_l2": self.latent_l2,
        }


def latent_shift(
    model: LatentDiffusion, clean: torch.Tensor, protected: torch.Tensor
) -> LatentShift:
    """Latent and pixel shifts between clean and protected images, using the posterior mean.

    The posterior mean (no sampling noise) makes the shift a property of the encoder alone.

    Args:
        model: the latent diffusion model whose encoder is measured; its state is restored.
        clean: (B, 3, H, W) in [0, 1]; any H and W (edge-padded to the VAE's multiple).
        protected: (B, 3, H, W) in [0, 1], the same shape as ``clean`` (padded identically).

    Returns:
        A ``LatentShift`` of (B,) tensors.

    Raises:
        ValueError: mismatched images, or an ``Ensemble`` (it has no one latent space).
    """
    check_single_model(model, "the latent shift")
    check_pair(protected, clean)
    pixel = (protected.double() - clean.double()).abs().flatten(1).amax(dim=1).cpu()
    padded = pad_to_multiple(torch.cat([clean, protected]).float(), model.size_multiple)
    with model.frozen(), torch.no_grad():
        latents = model.encode(padded).double().cpu()
    before, after = latents.chunk(2)
    change = (after - before).flatten(1)
    latent_linf = change.abs().amax(dim=1)
    ratio = torch.where(pixel > 0, latent_linf / pixel, torch.full_like(pixel, float("nan")))
    return LatentShift(
        latent_linf=latent_linf, pixel_linf=pixel, ratio=ratio, latent_l2=change.norm(dim=1)
    )
