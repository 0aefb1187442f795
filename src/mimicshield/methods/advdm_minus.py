"""AdvDM−: *minimise* the denoising loss, gradient through UNet and encoder.

The ablation of Xue et al., ICLR 2024 (arXiv 2311.12832) §5: descending L_S protects too.
Update: x ← Π(x − α·sign(∇ₓ L_S)).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import ObjectiveWeights
from .base import ProtectionMethod


@dataclass(frozen=True)
class AdvDMMinus(ProtectionMethod):
    """AdvDM− (Xue et al., ICLR 2024, §5): x ← Π(x − α·sign(∇ₓ L_S)), from a random start."""

    name = "advdm-"
    paper = "Xue et al., ICLR 2024 (arXiv 2311.12832)"

    random_start: bool = True

    def weights(self) -> ObjectiveWeights:
        """Descend the denoising loss L_S (weight −1); no other term."""
        return ObjectiveWeights(denoising=-1.0)
