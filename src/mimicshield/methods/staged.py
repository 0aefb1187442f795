"""Staged protection: methods run one after another, each from where the previous one ended.

Two ways to spend fewer UNet passes on the same protection are stages of one run:

- a warm start: a cheap encoder-only method (``photoguard``, ``pca-``) moves the perturbation
  most of the way, then a few SDS− steps finish it;
- coarse to fine: the first stage optimises a shrunk copy of the image (``scale`` 0.5: a quarter
  of the pixels, about a quarter of the work per step), its perturbation is enlarged to full
  size, and a last stage refines it there.

A single stage at a scale below 1 is working-resolution protection with a relative size. Every
stage keeps to the same ε-ball around the original image, so the result is within the budget
whatever the stages do. ``protect`` runs a ``Staged`` like a method; this module only holds the
configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..budget import Budget
from .base import ProtectionMethod

if TYPE_CHECKING:
    from ..models.ensemble import Surrogate


@dataclass(frozen=True)
class Stage:
    """One stage: a configured method, optimised at a fraction of the image's size.

    Attributes:
        method: the method of this stage, with its own budget (steps and step size); its ε must
            be the same as every other stage's.
        scale: side length at which the stage optimises, as a fraction of the image's, in
            (0, 1]; below 1 the image (and mask) are shrunk bicubically with antialiasing and the
            perturbation found is enlarged bicubically (see ``resolution``).
    """

    method: ProtectionMethod
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.method, ProtectionMethod):
            raise ValueError(
                f"a stage's method must be a configured method from METHODS, got "
                f"{type(self.method).__name__}"
            )
        if not 0.0 < self.scale <= 1.0 or math.isnan(self.scale):
            raise ValueError(f"a stage's scale must lie in (0, 1], got {self.scale!r}")

    def size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) this stage optimises an image of ``height`` × ``width`` at (each side ≥ 1)."""
        if self.scale == 1.0:
            return height, width
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def as_record(self) -> dict[str, object]:
        """The stage's method record with its scale."""
        return {**self.method.as_record(), "scale": self.scale}


@dataclass(frozen=True)
class Staged:
    """Stages run in order, each starting from the previous stage's result.

    The first stage starts the way its method does (clean image or random start); later
    stages continue from where the previous one ended, so their ``random_start`` is not used.

    Attributes:
        stages: one or more ``Stage``; their methods share one ε.

    Examples:
        A warm start: ten PhotoGuard steps, then ten SDS− steps from where they ended.

        >>> from mimicshield import METHODS, Budget
        >>> from mimicshield.methods.staged import Stage, Staged
        >>> warm = Staged((
        ...     Stage(METHODS["photoguard"](budget=Budget.from_255(16, 2, 10))),
        ...     Stage(METHODS["sds-"](budget=Budget.from_255(16, 1, 10))),
        ... ))
        >>> warm.name, warm.budget.steps
        ('photoguard then sds-', 20)
    """

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or not self.stages:
            raise ValueError(f"stages must be a non-empty tuple of Stage, got {self.stages!r}")
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise ValueError(f"every stage must be a Stage, got {type(stage).__name__}")
        radii = sorted({stage.method.budget.eps for stage in self.stages})
        if len(radii) > 1:
            shown = ", ".join(f"{eps * 255:g}/255" for eps in radii)
            raise ValueError(f"every stage must use the same ε, got {shown}")

    @property
    def name(self) -> str:
        """The stages' method names in order, each with its scale where it is below 1."""
        parts = [
            stage.method.name if stage.scale == 1.0 else f"{stage.method.name}@{stage.scale:g}"
            for stage in self.stages
        ]
        return " then ".join(parts)

    @property
    def budget(self) -> Budget:
        """The shared ε, the first stage's step size and the steps of all stages together."""
        first = self.stages[0].method.budget
        steps = sum(stage.method.budget.steps for stage in self.stages)
        return Budget(eps=first.eps, step_size=first.step_size, steps=steps)

    @property
    def unet_backward_draws(self) -> int:
        """The most UNet-differentiated noise draws of any stage (what memory must hold)."""
        return max(stage.method.unet_backward_draws for stage in self.stages)

    def check_model(self, model: Surrogate) -> None:
        """Raise ValueError if any stage's method cannot protect against ``model``."""
        for stage in self.stages:
            stage.method.check_model(model)

    def as_record(self) -> dict[str, object]:
        """Every stage's method record and scale, in order, for the provenance record."""
        return {
            "method": "staged",
            "eps_255": round(self.budget.eps * 255, 6),
            "steps": self.budget.steps,
            "stages": [stage.as_record() for stage in self.stages],
        }
