"""SDST: SDS− together with PhotoGuard's pull towards a textural target.

Xue et al., ICLR 2024 (arXiv 2311.12832). Update: x ← Π(x + α·sign(−w·J_Eᵀ(ε̂ − ε) − ∇ₓ L_T)),
w = 5 in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import TargetedMethod


@dataclass(frozen=True)
class SDST(TargetedMethod):
    """SDST (Xue et al., ICLR 2024): x ← Π(x + α·sign(−w·J_Eᵀ(ε̂ − ε) − ∇ₓ L_T))."""

    name = "sdst"
    paper = "Xue et al., ICLR 2024 (arXiv 2311.12832)"

    distillation_weight: float = 5.0  # w

    def weights(self) -> ObjectiveWeights:
        """Descend the SDS surrogate with weight −w (``distillation_weight``) and L_T with −1."""
        return ObjectiveWeights(score_distillation=-self.distillation_weight, latent_distance=-1.0)
