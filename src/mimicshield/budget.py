"""The L∞ budget of a protection, and keeping it on the tensor and on the saved 8- or 16-bit file.

Units (DESIGN §2): images are in [0, 1]; ``eps`` and ``step_size`` are L∞ distances on that
scale. Users speak in 0–255 units, so ``Budget.from_255(16, 1, 100)`` means ε = 16/255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Round-off allowance on the [0, 1] scale (1e-4 of an 8-bit level): float32 stores k/255 and
#: k/65535 only to ~6e-8, far below this, and this stays far below one 16-bit level (1.5e-5).
_ROUNDING_SLACK = 1e-4 / 255
#: Level counts of the files we write: 8-bit and 16-bit samples.
LEVELS = (255, 65535)


class BudgetError(ValueError):
    """A budget value is out of range."""


@dataclass(frozen=True)
class Budget:
    """How far, how fast and how long the perturbation may move.

    Attributes:
        eps: L∞ radius on the [0, 1] scale (16/255 in the reference code).
        step_size: L∞ size of one sign-gradient step on the [0, 1] scale (1/255).
        steps: number of PGD steps (100).
    """

    eps: float = 16 / 255
    step_size: float = 1 / 255
    steps: int = 100

    def __post_init__(self) -> None:
        if not (0.0 <= self.eps <= 1.0) or math.isnan(self.eps):
            raise BudgetError(f"eps must lie in [0, 255]/255, got {self.eps * 255:g}/255")
        if not (0.0 <= self.step_size <= 1.0) or math.isnan(self.step_size):
            raise BudgetError(
                f"step size must lie in [0, 255]/255, got {self.step_size * 255:g}/255"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise BudgetError(f"steps must be a whole number ≥ 0, got {self.steps!r}")

    @classmethod
    def from_255(cls, eps: float = 16, step_size: float = 1, steps: int = 100) -> Budget:
        """Build a budget from values in 0–255 units, the way users give them."""
        for name, value in (("eps", eps), ("step size", step_size)):
            if not (0 <= value <= 255):
                raise BudgetError(f"{name} must lie in [0, 255] (units of 1/255), got {value:g}")
        return cls(eps=eps / 255, step_size=step_size / 255, steps=steps)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Clip a perturbation into the L∞ ball of radius ``eps``."""
        return delta.clamp(-self.eps, self.eps)

    def as_record(self) -> dict[str, float | int]:
        """The budget in the 0–255 units users give, for provenance records."""
        return {
            "eps_255": round(self.eps * 255, 6),
            "step_size_255": round(self.step_size * 255, 6),
            "steps": self.steps,
        }


def quantise_within_budget(
    protected: torch.Tensor, original: torch.Tensor, eps: float, *, levels: int = 255
) -> torch.Tensor:
    """Round to whole levels (8- or 16-bit) while keeping ‖result/levels − original‖∞ ≤ eps exactly.

    Plain rounding can push a pixel that sat on the edge of the ball half a level outside it; each
    pixel is therefore clamped to the whole levels that lie inside [original − eps, original + eps].
    If that range holds no level (an original finer than the output with eps < half a level),
    the pixel takes the level nearest to the original, the closest the file can come.

    Args:
        protected: (..., H, W) float in [0, 1].
        original: same shape, float in [0, 1].
        eps: L∞ radius on the [0, 1] scale (the same 0–255 units whatever ``levels`` is).
        levels: the largest level of the output: 255 (8-bit) or 65535 (16-bit).

    Returns:
        Tensor of the same shape: uint8 for 255, int32 for 65535 (torch has no full uint16).
    """
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {LEVELS}, got {levels}")
    slack = _ROUNDING_SLACK * levels
    rounded = (protected.double() * levels).round()
    low = torch.ceil((original.double() - eps) * levels - slack).clamp(0, levels)
    high = torch.floor((original.double() + eps) * levels + slack).clamp(0, levels)
    nearest = (original.double() * levels).round()
    empty = low > high
    rounded = torch.where(empty, nearest, torch.maximum(torch.minimum(rounded, high), low))
    return rounded.to(torch.uint8 if levels == 255 else torch.int32)


def linf_255(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖∞ in 0–255 units, for two images on the [0, 1] scale, to 4 decimals.

    float32 images hold k/255 only to ~1e-5 levels; rounding keeps whole levels whole.
    """
    if not a.numel():
        return 0.0
    return round(float((a.double() - b.double()).abs().max() * 255), 4)
