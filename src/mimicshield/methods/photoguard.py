"""PhotoGuard's encoder attack: pull the latent of x towards the latent of a target image y.

Salman et al., "Raising the Cost of Malicious AI-Powered Image Editing", ICML 2023.
Update: x ← Π(x − α·sign(∇ₓ ‖E(x) − E(y)‖²)); the gradient runs through the encoder only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import TargetedMethod


@dataclass(frozen=True)
class PhotoGuard(TargetedMethod):
    """PhotoGuard encoder attack (Salman et al., ICML 2023): x ← Π(x − α·sign(∇ₓ L_T))."""

    name = "photoguard"
    paper = "Salman et al., ICML 2023 (arXiv 2302.06588)"

    random_start: bool = True

    def weights(self) -> ObjectiveWeights:
        """Descend L_T = ‖E(x) − E(y)‖² (weight −1); no UNet term."""
        return ObjectiveWeights(latent_distance=-1.0)
