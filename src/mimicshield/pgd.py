"""The one optimisation loop: L∞ projected gradient ascent (PGD, Madry et al. 2018).

Every method only supplies an objective to *maximise*; methods that descend a loss return its
negative. Keeping the loop in one place means budget, mask, start and seeding behave the same for
all of them. By default each step is the reference's sign step of constant size; the update rule
and the step-size schedule (``updates``) are options the caller names explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .budget import Budget
from .tensors import rand
from .updates import CONSTANT, SIGN, StepSchedule, UpdateRule

#: objective(images) -> scalar to maximise; images are (B, 3, H, W) float32 in [0, 1].
Objective = Callable[[torch.Tensor], torch.Tensor]
#: callback(step, total_steps, objective_value) after each step, for progress bars and logs.
StepCallback = Callable[[int, int, float], None]


def pgd(
    objective: Objective,
    images: torch.Tensor,
    budget: Budget,
    *,
    random_start: bool = False,
    start: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    update: UpdateRule = SIGN,
    schedule: StepSchedule = CONSTANT,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Maximise ``objective`` inside the L∞ ball of radius ``budget.eps`` around ``images``.

    Args:
        objective: maps perturbed images (B, 3, H, W) in [0, 1] to a scalar tensor.
        images: (B, 3, H, W) float in [0, 1]; never modified.
        budget: radius, step size (the first step's, under a decaying schedule) and steps.
        random_start: start from a uniform draw in the ball (AdvDM-style), not the clean image.
        start: (B, 3, H, W) perturbation to start from instead (e.g. where an earlier run
            ended); projected into the ball, [0, 1] and the mask first. Not with random_start.
        mask: (B or 1, 1, H, W) in [0, 1]; the perturbation is multiplied by it (1 = may change).
        update: how a gradient becomes a step direction (default: its sign, the reference).
        schedule: the step size of each step as a multiple of ``budget.step_size`` (default:
            constant, the reference).
        generator: the only source of randomness (the random start).
        callback: called after every step with (step, steps, objective value).

    Returns:
        (B, 3, H, W) float32 in [0, 1], detached, with ‖result − images‖∞ ≤ eps where mask = 1
        and result = images where mask = 0.

    Examples:
        Push the mean brightness up within 8/255; every pixel ends at the edge of the ball:

        >>> import torch
        >>> from mimicshield import Budget
        >>> from mimicshield.pgd import pgd
        >>> images = torch.full((1, 3, 4, 4), 0.5)
        >>> budget = Budget.from_255(eps=8, step_size=2, steps=5)
        >>> brighter = pgd(lambda x: x.mean(), images, budget)
        >>> round(float((brighter - images).max() * 255), 4)
        8.0
        >>> bool(torch.allclose(brighter, images + 8 / 255))
        True
    """
    if random_start and start is not None:
        raise ValueError("give a start perturbation or a random start, not both")
    clean = images.detach().to(torch.float32)
    keep = torch.ones_like(clean[:, :1]) if mask is None else mask.to(clean)

    # 1. Start: the clean image, a given perturbation, or a uniform draw in the ball (zero steps
    #    from a random start change nothing).
    if start is not None:
        delta = start.detach().to(clean)
    elif random_start and budget.eps > 0 and budget.steps > 0:
        noise = rand(clean.shape, generator, device=clean.device)
        delta = (noise * 2 - 1) * budget.eps
    else:
        delta = torch.zeros_like(clean)
    delta = _feasible(clean, delta * keep, budget)

    # 2. Steps: move along the update rule's direction, then project back into the ball and
    #    [0, 1]. With the defaults: x ← Π(x + α·sign(∇)).
    state = None
    for step in range(1, budget.steps + 1):
        perturbed = (clean + delta).requires_grad_(True)
        value = objective(perturbed)
        (gradient,) = torch.autograd.grad(value, perturbed)
        direction, state = update.step(gradient, state, step)
        size = budget.step_size * schedule.factor(step, budget.steps)
        delta = _feasible(clean, delta + size * direction * keep, budget)
        if callback is not None:
            callback(step, budget.steps, float(value.detach()))
    return (clean + delta).detach()


def _feasible(clean: torch.Tensor, delta: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Project delta into the ball and so that clean + delta stays in [0, 1]."""
    delta = budget.project(delta)
    return (clean + delta).clamp(0, 1) - clean
