"""``protect``: run a method, or stages of methods, on a batch of images with a model.

The public entry point. A single method runs the shared PGD loop once at the images' size; a
``Staged`` runs its stages in order, each from where the previous ended, shrinking the images
for stages at a scale below 1 (``protect_at_size``) and enlarging the perturbation they find.

The model may be an ``Ensemble``: a step's objective is then Σ_m w_m · objective_m, each member
encoding the images itself and drawing its own step noise, in member order, from the one
generator (``step_objective``).
"""

from __future__ import annotations

import copy

import torch

from .amortised import protect_amortised
from .methods import Amortised, ProtectionMethod, Stage, Staged
from .models import LatentDiffusion
from .models.ensemble import Surrogate, members_of
from .objectives import Conditioning, StepNoise, weighted_objective
from .pgd import Objective, StepCallback, pgd
from .targets import resolve_target
from .tensors import check_images, check_mask, pad_to_multiple, randint, resize

#: What ``protect`` runs: one configured method, or stages of them.
Protection = ProtectionMethod | Staged


def protect(
    images: torch.Tensor,
    method: Protection,
    model: Surrogate,
    *,
    mask: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Add ``method``'s bounded perturbation to ``images``.

    Args:
        images: (B, 3, H, W) float in [0, 1], any H and W (padded to the model's
            ``size_multiple`` and cropped back). Not modified.
        method: a configured method from ``METHODS``, or a ``Staged`` run of several.
        model: the latent diffusion model to protect against, or an ``Ensemble`` of several
            (PGD methods only); its state is restored afterwards.
        mask: (B or 1, 1, H, W) in [0, 1]: 1 where the perturbation may go, 0 where pixels stay.
        start: (B, 3, H, W) in [0, 1], an image to continue from (e.g. an earlier result for
            the same images) instead of the method's own start; its difference from ``images``
            is projected into the budget and the mask first.
        generator: the only source of randomness; same seed → same output.
        callback: called after each PGD step with (step, steps, objective value); a ``Staged``
            counts the steps of all its stages as one run.

    Returns:
        (B, 3, H, W) in [0, 1], same dtype and device as ``images``, within ``method.budget``.

    Raises:
        ValueError: bad images or mask, or a method that refuses ``model``
            (``method.check_model``: an amortised protector trained against another model, or
            given an ensemble).

    Examples:
        >>> import torch
        >>> from mimicshield import METHODS, Budget, LatentDiffusion, protect
        >>> model = LatentDiffusion.random("tiny")  # random weights: the mechanics only
        >>> method = METHODS["sds-"](budget=Budget.from_255(eps=16, step_size=4, steps=2))
        >>> images = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
        >>> protected = protect(images, method, model, generator=torch.Generator().manual_seed(0))
        >>> protected.shape
        torch.Size([2, 3, 24, 32])
        >>> bool((protected - images).abs().max() <= 16 / 255)
        True
    """
    # 1. Check the inputs.
    check_images(images)
    if mask is not None:
        check_mask(mask, images)
    method.check_model(model)
    if start is not None:
        check_images(start, "start")
        if start.shape != images.shape:
            raise ValueError(
                f"start must have the images' shape {tuple(images.shape)}, got {tuple(start.shape)}"
            )
    native = images.detach().float()
    current = None if start is None else start.detach().float()

    # 2. Each stage from where the last ended; a lone method is one stage at full size.
    stages = method.stages if isinstance(method, Staged) else (Stage(method),)
    total = sum(stage.method.budget.steps for stage in stages)
    done = 0
    for stage in stages:
        current = protect_at_size(
            native,
            stage.method,
            model,
            size=stage.size(*native.shape[-2:]),
            mask=mask,
            start=current,
            generator=generator,
            callback=_shifted(callback, done, total),
        )
        done += stage.method.budget.steps

    # 3. Hand back in the caller's dtype and device.
    return current.to(images.device, images.dtype)


def protect_at_size(
    images: torch.Tensor,
    method: Protection,
    model: Surrogate,
    *,
    size: tuple[int, int],
    mask: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Protect at ``size`` (h, w) and add the enlarged perturbation to ``images``.

    At the images' own size this is the PGD run itself. Smaller, the images, the mask and the
    start's perturbation are shrunk (bicubic, antialiased), ``method`` runs there, and the
    perturbation found is enlarged bicubically, masked and projected back into the budget and
    [0, 1] around ``images``.

    Args:
        images: (B, 3, H, W) float32 in [0, 1], checked by the caller. Not modified.
        method: a configured method or a ``Staged``.
        model: the latent diffusion model, or an ``Ensemble``.
        size: (h, w) to optimise at, at most (H, W).
        mask: (B or 1, 1, H, W) in [0, 1], or None.
        start: (B, 3, H, W) in [0, 1] to continue from, or None for the method's own start.
        generator: the only source of randomness.
        callback: called after each PGD step with (step, steps, objective value).

    Returns:
        (B, 3, H, W) float32 in [0, 1], within ``method.budget`` of ``images`` (and equal to
        them where ``mask`` is 0).
    """
    native_size = tuple(images.shape[-2:])
    if tuple(size) == native_size:
        if isinstance(method, Staged):
            return protect(
                images, method, model, mask=mask, start=start, generator=generator,
                callback=callback,
            )  # fmt: skip
        if isinstance(method, Amortised):
            return _one_pass(images, method, model, mask=mask, callback=callback)
        return _run_pgd(images, method, model, mask, start, generator, callback)
    small = resize(images, size).clamp(0, 1)
    small_mask = None if mask is None else resize(mask.float(), size).clamp(0, 1)
    small_start = None if start is None else (small + resize(start - images, size)).clamp(0, 1)
    protected = protect(
        small, method, model, mask=small_mask, start=small_start, generator=generator,
        callback=callback,
    )  # fmt: skip

    # Enlarge the perturbation, not the image: the native detail stays.
    delta = resize(protected.float() - small, native_size)
    if mask is not None:
        delta = delta * mask.to(delta)
    delta = method.budget.project(delta)
    return (images + delta).clamp(0, 1)


def _run_pgd(
    images: torch.Tensor,
    method: ProtectionMethod,
    model: Surrogate,
    mask: torch.Tensor | None,
    start: torch.Tensor | None,
    generator: torch.Generator | None,
    callback: StepCallback | None,
) -> torch.Tensor:
    """The shared PGD loop on ``method``'s objective: (B, 3, H, W) float32 → protected float32."""
    # 1. Pad to the model's multiple (edge-replicated, and the start with it).
    height, width = images.shape[-2:]
    factor = model.size_multiple
    padded = pad_to_multiple(images, factor)
    padded_mask = None if mask is None else pad_to_multiple(mask.float(), factor, 0)
    delta = None if start is None else pad_to_multiple(start, factor) - padded

    with model.frozen():
        # 2. The objective of one step (conditioning computed once, fresh noise each call).
        objective = step_objective(method, model, padded, generator)

        # 3. The shared PGD loop.
        protected = pgd(
            objective,
            padded.to(model.device),
            method.budget,
            random_start=method.random_start and delta is None,
            start=None if delta is None else delta.to(model.device),
            mask=None if padded_mask is None else padded_mask.to(model.device),
            update=method.update,
            schedule=method.step_schedule,
            generator=generator,
            callback=callback,
        )

    # 4. Crop back.
    return protected[..., :height, :width].to(images.device)


def step_objective(
    method: ProtectionMethod,
    model: Surrogate,
    images: torch.Tensor,
    generator: torch.Generator | None,
) -> Objective:
    """The objective PGD maximises for ``method`` against ``model``; call inside ``frozen()``.

    What stays fixed (prompt embeddings, target latents) is computed here once per member, for
    images of ``images``' shape (B, 3, H, W), sides multiples of ``model.size_multiple``. Each
    call of the objective draws fresh step noise (``StepNoise``), member after member.

    For an ensemble the objective is Σ_m w_m · weighted_objective(model_m, ...). Its members run
    one after another, each differentiated before the next starts, so only one member's
    activations are held at a time; the returned scalar has the ensemble's value and, with
    respect to the images it was called on (which must require grad, as in ``pgd``), the sum of
    the members' weighted gradients.
    """
    weights = method.weights()
    members = [
        (member, _conditioning(method, member.model, images)) for member in members_of(model)
    ]

    def one_model(perturbed: torch.Tensor) -> torch.Tensor:
        ((member, conditioning),) = members
        step = StepNoise.draw(member.model, perturbed, generator, method.noise_samples)
        return weighted_objective(member.model, perturbed, weights, conditioning, step)

    def ensemble(perturbed: torch.Tensor) -> torch.Tensor:
        value = torch.zeros((), device=perturbed.device)
        gradient = torch.zeros_like(perturbed)
        for member, conditioning in members:
            step = StepNoise.draw(member.model, perturbed, generator, method.noise_samples)
            term = member.weight * weighted_objective(
                member.model, perturbed, weights, conditioning, step
            )
            (member_gradient,) = torch.autograd.grad(term, perturbed)
            gradient += member_gradient
            value += term.detach()
        # Value of the sum, gradient of the sum: (x − x.detach()) is 0 with Jacobian I.
        return value + (gradient * (perturbed - perturbed.detach())).sum()

    return one_model if len(members) == 1 else ensemble


def _shifted(callback: StepCallback | None, done: int, total: int) -> StepCallback | None:
    """A stage's (step, steps, value) callback reported as (done + step, total, value)."""
    if callback is None:
        return None
    return lambda step, steps, value: callback(done + step, total, value)


def _one_pass(
    images: torch.Tensor,
    method: Amortised,
    model: LatentDiffusion,
    *,
    mask: torch.Tensor | None,
    callback: StepCallback | None,
) -> torch.Tensor:
    """The amortised method: its network's one pass on the model's device and in its dtype.

    The method's loaded network stays as loaded (float32, CPU: its record's weight digest must
    not depend on the run); another device or dtype gets a converted copy (≈ 3 MB). The
    callback is called once, as step 1 of 1, with NaN for the value: no objective is evaluated.
    """
    if method.budget.steps == 0:
        return images.detach().clone()
    network = method.network
    if (network.device, network.dtype) != (model.device, model.dtype):
        # nn.Module.to, not ModelMixin.to: diffusers warns on every dtype change of any model.
        network = torch.nn.Module.to(copy.deepcopy(network), model.device, model.dtype)
    protected = protect_amortised(images, network, eps=method.budget.eps, mask=mask)
    if callback is not None:
        callback(1, 1, float("nan"))
    return protected


def _conditioning(
    method: ProtectionMethod, model: LatentDiffusion, images: torch.Tensor
) -> Conditioning:
    """One model's fixed part of the objective: its prompt embeddings and target latents."""
    batch, _, height, width = images.shape
    embeddings = model.embed([method.prompt] * batch)
    target_latents = None
    if method.needs_target:
        target = resolve_target(method.target, height, width)
        with torch.no_grad():
            # The posterior mean: the target is fixed, so one deterministic encoding suffices.
            target_latents = model.encode(target.unsqueeze(0)).expand(batch, -1, -1, -1)
    return Conditioning(embeddings=embeddings, target_latents=target_latents)


def noise_control(
    images: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The equal-budget control: each channel of each pixel moved by +eps or −eps at random.

    A protection method is only worth its name where it beats this: it spends the whole L∞
    budget with no objective at all.

    Args:
        images: (B, 3, H, W) float in [0, 1]. Not modified.
        eps: L∞ budget on the [0, 1] scale.
        generator: the only randomness (signs drawn on its device, CPU without one, then moved).

    Returns:
        (B, 3, H, W) in [0, 1], ``images`` plus random signs times ``eps``, clipped.
    """
    check_images(images)
    signs = randint(0, 2, images.shape, generator, device=images.device).float() * 2 - 1
    return (images + signs * eps).clamp(0, 1)
