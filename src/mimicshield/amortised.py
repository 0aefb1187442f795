"""``protect_amortised``: one forward pass of a trained perturbation network, under the budget.

The amortised counterpart of the PGD loop (``pgd.py``): no objective, no gradient, no model; the
network alone maps images to a perturbation, which is masked, added and clipped to [0, 1]. It is
what ``protect`` runs for ``METHODS["amortised"]`` and what benchmarks time.
"""

from __future__ import annotations

import torch

from .models.protector import PerturbationNetwork
from .tensors import check_images, check_mask


def protect_amortised(
    images: torch.Tensor,
    network: PerturbationNetwork,
    *,
    eps: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add the network's perturbation to ``images``, within ε and [0, 1].

    Args:
        images: (B, 3, H, W) float in [0, 1], any H and W. Not modified.
        network: a trained ``PerturbationNetwork`` on any device and in any dtype; the images
            are moved to it and the result comes back to theirs.
        eps: L∞ radius on the [0, 1] scale; None: the one the network was trained for.
        mask: (B or 1, 1, H, W) in [0, 1]: 1 where the perturbation may go, 0 where pixels stay.

    Returns:
        (B, 3, H, W) in [0, 1], same dtype and device as ``images``, with
        ‖result − images‖∞ ≤ ε (up to float32 rounding of the sum), unchanged where mask = 0,
        the same for the same input (no randomness).

    Examples:
        >>> import torch
        >>> from mimicshield.models import PerturbationNetwork
        >>> network = PerturbationNetwork(block_channels=(4, 8))  # untrained: the mechanics
        >>> images = torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(0))
        >>> protected = protect_amortised(images, network, eps=8 / 255)
        >>> protected.shape
        torch.Size([2, 3, 24, 30])
        >>> bool((protected - images).abs().max() <= 8 / 255 + 1e-7)
        True
    """
    check_images(images)
    if mask is not None:
        check_mask(mask, images)
    clean = images.detach().float()
    with torch.no_grad():
        delta = network(clean.to(network.device), eps=eps).to(clean.device)
    if mask is not None:
        delta = delta * mask.to(delta)
    return (clean + delta).clamp(0, 1).to(images.dtype)
