"""``protect``: run a method on a batch of images with a model (the public entry point)."""

from __future__ import annotations

import copy

import torch

from .amortised import protect_amortised
from .methods import Amortised, ProtectionMethod
from .models import LatentDiffusion
from .objectives import Conditioning, StepNoise, weighted_objective
from .pgd import StepCallback, pgd
from .targets import resolve_target
from .tensors import check_images, check_mask, pad_to_multiple, randint


def protect(
    images: torch.Tensor,
    method: ProtectionMethod,
    model: LatentDiffusion,
    *,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Add ``method``'s bounded perturbation to ``images``.

    Args:
        images: (B, 3, H, W) float in [0, 1], any H and W (padded to the VAE's multiple and
            cropped back). Not modified.
        method: a configured method from ``METHODS``.
        model: the latent diffusion model to protect against; its state is restored afterwards.
        mask: (B or 1, 1, H, W) in [0, 1]: 1 where the perturbation may go, 0 where pixels stay.
        generator: the only source of randomness; same seed → same output.
        callback: called after each PGD step with (step, steps, objective value).

    Returns:
        (B, 3, H, W) in [0, 1], same dtype and device as ``images``, within ``method.budget``.

    Raises:
        ValueError: bad images or mask, or a method that refuses ``model``
            (``method.check_model``: an amortised protector trained against another model).

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
    # 1. Check the inputs and pad to the VAE's multiple.
    check_images(images)
    if mask is not None:
        check_mask(mask, images)
    method.check_model(model)
    if isinstance(method, Amortised):
        return _one_pass(images, method, model, mask=mask, callback=callback)
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images.detach().float(), model.vae_scale_factor)
    padded_mask = None if mask is None else pad_to_multiple(mask.float(), model.vae_scale_factor, 0)

    with model.frozen():
        # 2. What stays fixed: prompt embeddings and target latents, computed once.
        conditioning = _conditioning(method, model, padded)
        weights = method.weights()

        # 3. The objective of one step, with fresh timestep and noise each call.
        def objective(perturbed: torch.Tensor) -> torch.Tensor:
            step = StepNoise.draw(model, perturbed, generator, method.noise_samples)
            return weighted_objective(model, perturbed, weights, conditioning, step)

        # 4. The shared PGD loop.
        protected = pgd(
            objective,
            padded.to(model.device),
            method.budget,
            random_start=method.random_start,
            mask=None if padded_mask is None else padded_mask.to(model.device),
            generator=generator,
            callback=callback,
        )

    # 5. Crop back; hand back in the caller's dtype and device.
    return protected[..., :height, :width].to(images.device, images.dtype)


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
