"""Full-reference image quality: PSNR and SSIM on (B, C, H, W) float tensors in [0, 1].

Written in torch because the references (scikit-image) are NumPy-only and per-image, while we
measure batches on the model's device. SSIM follows Wang et al. 2004 with scikit-image's Gaussian
variant (σ = 1.5, 11 taps, population covariance, borders of 5 pixels excluded); the tests check
agreement with ``skimage.metrics.structural_similarity``.
"""

from __future__ import annotations

import torch

from ..tensors import check_pair, gaussian_kernel1d, separable_filter

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 · σ + 0.5): scikit-image's truncation of the Gaussian
_K1, _K2 = 0.01, 0.03
#: The smallest height and width SSIM measures: one whole Gaussian window.
SSIM_MIN_SIZE = 2 * _SSIM_RADIUS + 1


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, in float64 (never on wrapping integers).

    Args:
        images: (B, C, H, W) in [0, 1].
        references: same shape, in [0, 1].

    Returns:
        (B,) float64; +inf where the images are identical.
    """
    check_pair(images, references, channels=None)
    error = (images.double() - references.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / error)


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, averaged over channels and valid pixels.

    Args:
        images: (B, C, H, W) in [0, 1], H and W ≥ 11.
        references: same shape, in [0, 1].

    Returns:
        (B,) float64 in [-1, 1]; 1 for identical images.

    Examples:
        >>> import torch
        >>> from mimicshield.metrics import ssim
        >>> images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> ssim(images, images)
        tensor([1., 1.], dtype=torch.float64)
        >>> bool(ssim(images, 1 - images)[0] < 0)  # inverted contrast: negative correlation
        True
    """
    check_pair(images, references, channels=None)
    size = SSIM_MIN_SIZE
    if min(images.shape[-2:]) < size:
        raise ValueError(
            f"SSIM needs images of at least {size}×{size}, got {tuple(images.shape[-2:])}"
        )
    x, y = images.double(), references.double()
    taps = gaussian_kernel1d(size, _SSIM_SIGMA, device=x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # Unpadded, so only the pixels scikit-image keeps (borders of the radius excluded).
        return separable_filter(t, taps)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov = blur(x * y) - mean_x * mean_y
    c1, c2 = _K1**2, _K2**2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.flatten(1).mean(dim=1)
