"""SDS−, the recommended method: descend the SDS surrogate of L_S, no UNet backward.

Xue et al., ICLR 2024 (arXiv 2311.12832). Update: x ← Π(x − α·sign(J_Eᵀ(ε̂ − ε))). Protects as
well as SDS+ with a more natural-looking perturbation, at about half AdvDM's time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import ProtectionMethod


@dataclass(frozen=True)
class SDSMinus(ProtectionMethod):
    """SDS− (Xue et al., ICLR 2024): x ← Π(x − α·sign(J_Eᵀ(ε̂ − ε))), no UNet backward."""

    name = "sds-"
    paper = "Xue et al., ICLR 2024 (arXiv 2311.12832)"

    def weights(self) -> ObjectiveWeights:
        """Descend the SDS surrogate of L_S (weight −1); no other term."""
        return ObjectiveWeights(score_distillation=-1.0)
