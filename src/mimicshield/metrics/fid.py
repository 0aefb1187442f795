"""Fréchet distance between image sets (FID, Heusel et al. 2017) over any feature network.

Each set's features are fitted with a Gaussian N(μ, Σ) and

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

The trace of the matrix square root is computed as Σ √λ_i over the eigenvalues of the symmetric
positive semi-definite A = Σ₁^{1/2} Σ₂ Σ₁^{1/2} (A is similar to Σ₁ Σ₂, so it has the same
eigenvalues), in float64 with symmetric eigensolvers. Unlike ``scipy.linalg.sqrtm`` of the
non-symmetric Σ₁ Σ₂ this never produces complex round-off, and tiny negative eigenvalues from
round-off are clipped to zero.

With CLIP image embeddings as features (the default in the evaluation) this is FD_CLIP
(Kynkäänniemi et al. 2023); with pytorch-fid's Inception it is the classic FID.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..tensors import check_images
from .errors import MetricUnavailableError

FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]

#: Below this many images per set, FD is dominated by estimation bias (rule of thumb; FID papers
#: use 10k–50k).
MIN_MEANINGFUL_SET = 50


class SmallSampleWarning(UserWarning):
    """A set is too small for its Fréchet distance to mean much."""


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64.

    Warns (``SmallSampleWarning``) when N < ``MIN_MEANINGFUL_SET`` or N ≤ D (the covariance is
    then rank-deficient); raises ValueError when N < 2 (no covariance at all).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    count, dimension = features.shape
    if count < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got {count}")
    if count < MIN_MEANINGFUL_SET or count <= dimension:
        warnings.warn(
            f"a set of {count} images is too small for a Fréchet distance over {dimension}-"
            f"dimensional features to be meaningful (wanted at least {MIN_MEANINGFUL_SET} and more "
            f"than {dimension}); compare such numbers only with others of the same set sizes",
            SmallSampleWarning,
            stacklevel=2,
        )
    values = features.double()
    mean = values.mean(dim=0)
    centred = values - mean
    covariance = centred.T @ centred / (count - 1)
    return mean, covariance


def frechet_distance(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mean1, cov1) and N(mean2, cov2).

    Args:
        mean1: (D,), the first distribution's mean.
        cov1: (D, D) symmetric positive semi-definite, its covariance.
        mean2: (D,), the second distribution's mean.
        cov2: (D, D) symmetric positive semi-definite, its covariance.

    Returns:
        The distance, ≥ 0 (float).
    """
    dimension = mean1.shape[0]
    for name, tensor, shape in (
        ("mean1", mean1, (dimension,)),
        ("mean2", mean2, (dimension,)),
        ("cov1", cov1, (dimension, dimension)),
        ("cov2", cov2, (dimension, dimension)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    mean1, mean2 = mean1.double().cpu(), mean2.double().cpu()
    cov1, cov2 = _symmetric(cov1.double().cpu()), _symmetric(cov2.double().cpu())
    root1 = _psd_sqrt(cov1)
    middle = _symmetric(root1 @ cov2 @ root1)
    trace_root = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    # Round-off can leave a tiny negative number for identical sets.
    return max(float(distance), 0.0)


def features_of(
    images: torch.Tensor, network: FeatureNetwork, *, batch_size: int = 32
) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, D) float64 features on the CPU, computed in batches."""
    check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    with torch.no_grad():
        chunks = [network(chunk).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(chunks)


def frechet_feature_distance(
    images: torch.Tensor,
    references: torch.Tensor,
    network: FeatureNetwork,
    *,
    batch_size: int = 32,
) -> float:
    """Fréchet distance between two image sets in ``network``'s feature space.

    Args:
        images: (N, 3, H, W) in [0, 1].
        references: (M, 3, H', W') in [0, 1]; counts and sizes may differ from ``images``'.
        network: images → (B, D) features, e.g. ``load_clip()`` (FD_CLIP) or ``load_inception()``.
        batch_size: images per network call (memory bound).

    Returns:
        The distance (float, ≥ 0). Warns ``SmallSampleWarning`` for small sets.
    """
    mean1, cov1 = gaussian_fit(features_of(images, network, batch_size=batch_size))
    mean2, cov2 = gaussian_fit(features_of(references, network, batch_size=batch_size))
    return frechet_distance(mean1, cov1, mean2, cov2)


def load_inception(*, device: str | torch.device = "cpu") -> FeatureNetwork:
    """pytorch-fid's FID Inception-v3 (2048-d pool features), for the classic FID.

    Raises:
        MetricUnavailableError: pytorch-fid is not installed or its weights cannot be fetched.
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        raise MetricUnavailableError(
            "Inception FID needs the `pytorch-fid` package, which is not installed: run `pip "
            "install pytorch-fid` (it brings torchvision), or use the CLIP features instead."
        ) from None
    try:
        inception = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except OSError:  # urllib's URLError: the FID weights are not cached and cannot be downloaded
        raise MetricUnavailableError(
            "pytorch-fid could not load its Inception weights, which it downloads once into "
            f"{torch.hub.get_dir()}: run it once with network access or copy the weights there."
        ) from None
    inception.eval().requires_grad_(False).to(device)

    def pool_features(images: torch.Tensor) -> torch.Tensor:
        # pytorch-fid resizes to 299 and maps [0, 1] to [-1, 1] itself.
        return inception(images.to(device))[0].flatten(1)

    return pool_features


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """Average with the transpose: removes asymmetry from round-off before an eigensolver."""
    return (matrix + matrix.T) / 2


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric PSD matrix, negative round-off eigenvalues clipped."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T
