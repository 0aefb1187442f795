"""PCA−, the posterior collapse attack: collapse the encoder's posterior, no UNet at all.

Guo et al., "A Grey-box Attack against Latent Diffusion Model-based Image Editing by Posterior
Collapse", arXiv 2408.10901 (2024). Update: x ← Π(x − α·sign(∇ₓ L_PCA)) with
L_PCA = ½ Σᵢ (−ln σᵢ² − 1 + (μᵢ² + σᵢ²)/v) and v = 1e-8, from the clean image: the posterior's
mean and spread are driven to zero, so whatever the denoiser does next starts from a latent
that no longer holds the picture. Only the VAE encoder is needed (under 4 % of the model).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import ProtectionMethod


@dataclass(frozen=True)
class PCAMinus(ProtectionMethod):
    """PCA− (Guo et al., 2024): x ← Π(x − α·sign(∇ₓ L_PCA)), v = 1e-8, encoder only.

    The authors' code runs 40 steps of 2/255 within 16/255; this class keeps the package's
    shared default budget like every method, and the step-schedule bench measures shorter ones.
    """

    name = "pca-"
    paper = "Guo et al., 2024 (arXiv 2408.10901)"

    variance: float = 1e-8  # v: the target variance of the collapsed posterior (paper: 1e-8)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variance > 0:
            raise ValueError(f"variance v must be > 0, got {self.variance!r}")

    def weights(self) -> ObjectiveWeights:
        """Descend L_PCA with target variance v (weight −1); no UNet term."""
        return ObjectiveWeights(posterior_collapse=-1.0, posterior_variance=self.variance)
