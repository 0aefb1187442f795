"""AdvDM: maximise the denoising loss, gradient through UNet and encoder.

Liang et al., "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion
Models via Adversarial Examples", ICML 2023. Update: x ← Π(x + α·sign(∇ₓ L_S)).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import ProtectionMethod


@dataclass(frozen=True)
class AdvDM(ProtectionMethod):
    """AdvDM (Liang et al., ICML 2023): x ← Π(x + α·sign(∇ₓ L_S)), from a random start."""

    name = "advdm"
    paper = "Liang et al., ICML 2023 (arXiv 2302.04578)"

    random_start: bool = True

    def weights(self) -> ObjectiveWeights:
        """Ascend the denoising loss L_S with weight 1; no other term."""
        return ObjectiveWeights(denoising=1.0)
