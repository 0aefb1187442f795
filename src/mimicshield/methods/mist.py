"""Mist: the textural loss towards a target together with the semantic (AdvDM) loss.

Liang & Wu, "Mist: Towards Improved Adversarial Examples for Diffusion Models", arXiv 2305.12683.
Update: x ← Π(x − α·sign(∇ₓ (L_T − λ·L_S))), λ = 1e4 in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import TargetedMethod


@dataclass(frozen=True)
class Mist(TargetedMethod):
    """Mist (Liang & Wu, 2023): x ← Π(x − α·sign(∇ₓ (L_T − λ·L_S))), from a random start."""

    name = "mist"
    paper = "Liang & Wu, 2023 (arXiv 2305.12683)"

    random_start: bool = True
    semantic_weight: float = 1e4  # λ: L_S is a per-element mean, L_T a sum, hence the scale

    def weights(self) -> ObjectiveWeights:
        """Ascend L_S with weight λ = ``semantic_weight`` and descend L_T (weight −1)."""
        return ObjectiveWeights(denoising=self.semantic_weight, latent_distance=-1.0)
