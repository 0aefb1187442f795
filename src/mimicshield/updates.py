"""How one PGD step moves the perturbation: the update rule and the step-size schedule.

The reference moves every pixel by ±α, the sign of the gradient (``SignUpdate`` with a constant
α). Shorter schedules may do better with a memory of past gradients or a step that shrinks as
the perturbation settles; each option is a small frozen configuration the loop asks for two
things, and each is written into the run's record:

- an update rule turns the gradient into a direction of L∞ size about 1, keeping its own state
  between steps: ``SignUpdate`` (the reference), ``MomentumUpdate`` (MI-FGSM, Dong et al. 2018)
  and ``AdamUpdate`` (Kingma & Ba 2015, projected like every step);
- a step-size schedule scales α per step: ``ConstantStep`` (the reference), ``LinearDecay`` and
  ``CosineDecay`` from α at the first step down to ``final`` · α at the last.

The loop (``pgd.pgd``) adds size · direction · mask to the perturbation and projects it back into
the ε-ball and [0, 1] after every step, whatever the rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

#: The state an update rule carries from one step to the next (None for the stateless sign).
UpdateState = tuple[torch.Tensor, ...] | None


def _per_image_mean_abs(gradient: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, 1) mean |gradient| of each image, never zero (a zero gradient stays zero)."""
    scale = gradient.abs().mean(dim=tuple(range(1, gradient.dim())), keepdim=True)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


class _Recorded:
    """What every rule and schedule shares: its ``name`` and settings in the run's record."""

    name: ClassVar[str]
    #: The record's key for ``name``: "rule" or "schedule".
    kind: ClassVar[str]

    def as_record(self) -> dict[str, object]:
        """The name and settings, for the run's record (the subclasses are dataclasses)."""
        return {self.kind: self.name, **asdict(self)}


class _Rule(_Recorded):
    kind = "rule"


class _Schedule(_Recorded):
    kind = "schedule"


@dataclass(frozen=True)
class SignUpdate(_Rule):
    """The reference: direction = sign(∇), every pixel moved by exactly ±α (Madry et al. 2018)."""

    name: ClassVar[str] = "sign"

    def step(
        self, gradient: torch.Tensor, state: UpdateState, step: int
    ) -> tuple[torch.Tensor, UpdateState]:
        """(direction, state) for ``gradient`` (B, 3, H, W); ``step`` counts from 1."""
        return gradient.sign(), None


@dataclass(frozen=True)
class MomentumUpdate(_Rule):
    """MI-FGSM (Dong et al., CVPR 2018, Eq. 6–7): g ← μ·g + ∇/‖∇‖₁; direction = sign(g).

    The L1 norm is each image's own (over its channels and pixels), so that every step adds a
    gradient of the same size to the accumulator whatever the loss's scale. Scaling by the mean
    instead of the sum (a constant factor per image size) leaves the sign unchanged.

    Attributes:
        decay: μ, how much of the accumulated direction each step keeps (1.0 in the paper).
    """

    name: ClassVar[str] = "momentum"
    decay: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0 or math.isnan(self.decay):
            raise ValueError(f"momentum decay must lie in [0, 1], got {self.decay!r}")

    def step(
        self, gradient: torch.Tensor, state: UpdateState, step: int
    ) -> tuple[torch.Tensor, UpdateState]:
        """(sign of the accumulated gradient, the accumulator) for ``gradient`` (B, 3, H, W)."""
        normalised = gradient / _per_image_mean_abs(gradient)
        accumulated = normalised if state is None else self.decay * state[0] + normalised
        return accumulated.sign(), (accumulated,)


@dataclass(frozen=True)
class AdamUpdate(_Rule):
    """Adam (Kingma & Ba, ICLR 2015, Algorithm 1) as the step direction, then projected.

    direction = m̂ / (√v̂ + ε̂), with m and v the bias-corrected running means of the gradient and
    of its square. The gradient is first divided by each image's mean |∇|, so ε̂ is small next to
    √v̂ whatever the loss's scale; the first direction is then ≈ sign(∇), and later ones stay
    about 1 in size, so α keeps its meaning of an L∞ step.

    Attributes:
        beta1: decay of the first moment (0.9 in the paper).
        beta2: decay of the second moment (0.999).
        epsilon: ε̂, added to √v̂ (1e-8).
    """

    name: ClassVar[str] = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        for label, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= value < 1.0 or math.isnan(value):
                raise ValueError(f"Adam {label} must lie in [0, 1), got {value!r}")
        if not self.epsilon > 0:
            raise ValueError(f"Adam epsilon must be > 0, got {self.epsilon!r}")

    def step(
        self, gradient: torch.Tensor, state: UpdateState, step: int
    ) -> tuple[torch.Tensor, UpdateState]:
        """(m̂ / (√v̂ + ε̂), (m, v)) for ``gradient`` (B, 3, H, W); ``step`` counts from 1."""
        normalised = gradient / _per_image_mean_abs(gradient)
        first, second = (
            (torch.zeros_like(normalised), torch.zeros_like(normalised)) if state is None else state
        )
        first = self.beta1 * first + (1 - self.beta1) * normalised
        second = self.beta2 * second + (1 - self.beta2) * normalised.square()
        first_hat = first / (1 - self.beta1**step)
        second_hat = second / (1 - self.beta2**step)
        return first_hat / (second_hat.sqrt() + self.epsilon), (first, second)


@dataclass(frozen=True)
class ConstantStep(_Schedule):
    """The reference: α at every step."""

    name: ClassVar[str] = "constant"

    def factor(self, step: int, steps: int) -> float:
        """The multiple of α for ``step`` (1 … ``steps``): always 1."""
        return 1.0


@dataclass(frozen=True)
class LinearDecay(_Schedule):
    """α at the first step, falling in a straight line to ``final`` · α at the last.

    Attributes:
        final: the last step's size as a fraction of the first's, in [0, 1].
    """

    name: ClassVar[str] = "linear"
    final: float = 0.1

    def __post_init__(self) -> None:
        _check_final(self.final)

    def factor(self, step: int, steps: int) -> float:
        """The multiple of α for ``step`` (1 … ``steps``): 1 at the first, ``final`` at the last."""
        progress = _progress(step, steps)
        return 1.0 - progress * (1.0 - self.final)


@dataclass(frozen=True)
class CosineDecay(_Schedule):
    """α at the first step, falling along half a cosine to ``final`` · α at the last.

    Large steps last longer than with ``LinearDecay`` and the last few are nearly equal (the
    schedule of SGDR, Loshchilov & Hutter 2017, without restarts).

    Attributes:
        final: the last step's size as a fraction of the first's, in [0, 1].
    """

    name: ClassVar[str] = "cosine"
    final: float = 0.1

    def __post_init__(self) -> None:
        _check_final(self.final)

    def factor(self, step: int, steps: int) -> float:
        """The multiple of α for ``step`` (1 … ``steps``): 1 at the first, ``final`` at the last."""
        progress = _progress(step, steps)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _progress(step: int, steps: int) -> float:
    """0 at the first step, 1 at the last (0 throughout a one-step schedule)."""
    return 0.0 if steps <= 1 else (step - 1) / (steps - 1)


def _check_final(final: float) -> None:
    if not 0.0 <= final <= 1.0 or math.isnan(final):
        raise ValueError(f"the final step's fraction must lie in [0, 1], got {final!r}")


UpdateRule = SignUpdate | MomentumUpdate | AdamUpdate
StepSchedule = ConstantStep | LinearDecay | CosineDecay
#: The reference's step: the sign of the gradient, the same size every step.
SIGN = SignUpdate()
CONSTANT = ConstantStep()

#: ``--update`` names → the rule with its paper's settings.
UPDATE_RULES: dict[str, type[UpdateRule]] = {
    rule.name: rule for rule in (SignUpdate, MomentumUpdate, AdamUpdate)
}
#: ``--step-decay`` names → the schedule with its default final fraction.
STEP_SCHEDULES: dict[str, type[StepSchedule]] = {
    schedule.name: schedule for schedule in (ConstantStep, LinearDecay, CosineDecay)
}
