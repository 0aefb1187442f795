"""SDEdit (image-to-image): noise an image part of the way and denoise it under a prompt.

Meng et al., "SDEdit: Guided image synthesis and editing with stochastic differential equations",
ICLR 2022. With ``strength`` s and N DDIM steps, the image's latent is noised to the timestep of
step ⌊s·N⌋ from the end and denoised over those ⌊s·N⌋ steps. The evaluation protocol (DESIGN §4)
uses N = 100, s ∈ {0.01, 0.05, 0.1, 0.2, 0.3, 0.5}, the protection prompt and no guidance.

``one_step_reconstruction`` is the single-shot variant: noise to t = s·T and decode the UNet's
x̂₀ estimate directly, which shows what the denoiser "sees" in the encoder's latent.

Where our conventions differ from the paper's reference code (Diff-Protect ``attacks.py::SDEdit``;
``reviews/reference-spec.md`` §2.1), with N = 100 DDIM steps over T = 1000, DDIM timesteps
τ = 1, 11, …, 991 and k = ⌊s·N⌋ steps:

- Multi-step start. We follow diffusers: the latent is noised to τ[k−1] (t = 1, 41, 91, 191, 291
  for s = 0.01 … 0.3) and denoised over τ[k−1], …, τ[0]. The reference noises one DDIM stride
  higher, to τ[k] (t = 11, 51, 101, 201, 301), and then runs the same k steps from τ[k−1] (its
  first step treats the latent as less noisy than it is). At s = 0.01 ours adds noise of σ = 0.041
  where the reference adds σ = 0.102: our weakest mimicry is weaker, so protection looks stronger
  there. The reference also takes k = int(s·N) without our 1e-6 round-off tolerance.
- One-step timestep. Ours is t = round(s·T) − 1 (9, 49, 99, 199, 299, counting s·T from 1, the
  timestep diffusion purification also starts from); the reference's is int(s·T) (10, 50, 100,
  200, 300).

``reference_conventions=True`` reproduces both of the reference's choices exactly.

Flow-matching families (SD3, FLUX) run their own img2img pipelines with the Euler flow sampler:
the latent is mixed with noise at the σ of the first of the last ⌊s·N⌋ steps and integrated from
there, the same "re-run a fraction s of the schedule" meaning of strength (their pipelines round
s·N up where SD's round it down; ``pipeline_strength`` makes both run ⌊s·N⌋). The reference's DDIM
conventions do not apply to them: ``reference_conventions`` is refused.

An inpainting model (9-channel UNet) is run as diffusers' inpainting pipeline with a mask that
covers the whole image: the same noising and DDIM steps, with the UNet given the "repaint
everything" condition (``LatentDiffusion.repaint_everything``), since it has no img2img mode.
"""

from __future__ import annotations

import logging
import math

import torch
from diffusers import DDIMScheduler

from ..models import LatentDiffusion
from ..tensors import (
    check_guidance,
    check_images,
    check_positive,
    check_strength,
    pad_to_multiple,
    randn,
)
from ._common import guidance_arguments, to_caller

logger = logging.getLogger(__name__)

#: The strengths of the reference evaluation, plus the commonly reported 0.5.
REFERENCE_STRENGTHS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)


def denoising_steps(strength: float, num_inference_steps: int) -> int:
    """How many DDIM steps SDEdit runs: ⌊strength · num_inference_steps⌋, and at least one.

    diffusers takes the same floor but stops with an error when it is zero (e.g. strength 0.01
    with fewer than 100 steps). An edit of zero steps is no edit at all, so the smallest edit the
    step grid allows (one step, from the last DDIM timestep) is run instead and a warning says so.
    The small tolerance keeps products like 0.57 · 100 = 56.99999… from losing a step.
    """
    check_strength(strength)
    check_positive(num_inference_steps, "num_inference_steps")
    steps = min(math.floor(strength * num_inference_steps + 1e-6), num_inference_steps)
    if steps == 0:
        logger.warning(
            "strength %g × %d steps is less than one DDIM step; running one step (effective "
            "strength %g). Use more steps for a finer strength.",
            strength,
            num_inference_steps,
            1 / num_inference_steps,
        )
        return 1
    return steps


def pipeline_strength(model: LatentDiffusion, steps: int, num_inference_steps: int) -> float:
    """The ``strength`` to hand the family's img2img pipeline so that it runs exactly ``steps``.

    The pipelines recompute the step count from the strength s they are given, two ways: the
    DDPM families' (SD, SDXL) run int(s·N) steps, the flow families' (SD3, FLUX) N − int(N − s·N),
    i.e. ⌈s·N⌉. Handing them the middle of the interval that yields ``steps`` (steps ± ½ over N)
    gives ``steps`` exactly under either rule, whatever the float round-off.
    """
    middle = steps - 0.5 if model.prediction_type == "flow" else steps + 0.5
    return min(1.0, middle / num_inference_steps)


def check_reference_conventions(model: LatentDiffusion) -> None:
    """Raise ValueError for a flow-matching model: the reference's conventions are DDIM's."""
    if model.prediction_type == "flow":
        raise ValueError(
            "reference_conventions reproduce the reference's DDIM schedule; they do not apply "
            f"to the flow-matching model '{model.name}' ({model.family})"
        )


def sdedit(
    model: LatentDiffusion,
    images: torch.Tensor,
    *,
    prompt: str,
    strength: float,
    num_inference_steps: int = 100,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    reference_conventions: bool = False,
) -> torch.Tensor:
    """Multi-step DDIM SDEdit of ``images`` with diffusers' img2img pipeline.

    Args:
        model: the loaded model; its parts are used in place and its state left as it was.
        images: (B, 3, H, W) float in [0, 1], any H and W (edge-padded to the VAE's multiple and
            cropped back). Not modified.
        prompt: text condition, the same for every image (use the protection prompt).
        strength: in (0, 1]: the fraction of the DDIM schedule to re-run (see ``denoising_steps``).
        num_inference_steps: DDIM steps of the full schedule (100 in the protocol).
        guidance_scale: classifier-free guidance; 1 (the protocol's) means none.
        generator: the only randomness (posterior sample and noise); same seed → same output.
        reference_conventions: noise one DDIM stride higher and take k = int(s·N), as the
            reference code does (see the module docstring); DDPM families only.

    Returns:
        (B, 3, H, W) in [0, 1], on the device and in the dtype of ``images``.

    Raises:
        ValueError: ``reference_conventions`` for a flow-matching model, or a bad argument.

    Examples:
        >>> import torch
        >>> from mimicshield import LatentDiffusion
        >>> from mimicshield.mimicry import sdedit
        >>> model = LatentDiffusion.random("tiny")  # random weights: the mechanics only
        >>> images = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
        >>> def edit(seed):
        ...     generator = torch.Generator().manual_seed(seed)
        ...     return sdedit(model, images, prompt="a photo", strength=0.3,
        ...                   num_inference_steps=10, generator=generator)
        >>> edited = edit(0)
        >>> edited.shape, bool(edited.min() >= 0 and edited.max() <= 1)
        (torch.Size([1, 3, 20, 28]), True)
        >>> torch.equal(edited, edit(0))  # same seed, same edit
        True
    """
    # 1. Check the inputs and fix the number of denoising steps.
    check_images(images)
    check_guidance(guidance_scale)
    steps = denoising_steps(strength, num_inference_steps)
    overrides = {}
    if reference_conventions:
        check_reference_conventions(model)
        steps = max(1, int(strength * num_inference_steps))
        overrides["scheduler"] = _ReferenceStartDDIM.from_config(model.scheduler.config)

    # 2. Run the family's pipeline on the same parts, padded to the size multiple.
    padded = pad_to_multiple(images.detach().float(), model.size_multiple).to(model.device)
    inputs = {
        "prompt": [prompt] * len(images),
        "image": padded,
        "strength": pipeline_strength(model, steps, num_inference_steps),
        "num_inference_steps": num_inference_steps,
        "generator": generator,
        "output_type": "pt",
        **guidance_arguments(model, guidance_scale, len(images)),
    }
    task = "img2img"
    if model.is_inpainting:
        task = "inpaint"
        whole = torch.ones_like(padded[:, :1])
        inputs |= {"mask_image": whole, "height": padded.shape[-2], "width": padded.shape[-1]}
    elif model.prediction_type == "flow":
        inputs |= {"height": padded.shape[-2], "width": padded.shape[-1]}
    pipeline = model.pipeline(task, **overrides)
    with model.frozen():
        edited = pipeline(**inputs).images

    # 3. Crop back; hand back in the caller's dtype and device.
    return to_caller(edited, images)


def one_step_reconstruction(
    model: LatentDiffusion,
    images: torch.Tensor,
    *,
    prompt: str,
    strength: float,
    generator: torch.Generator | None = None,
    reference_conventions: bool = False,
) -> torch.Tensor:
    """Noise each latent to t = s·T, predict x̂₀ with one UNet call, decode it.

    x̂₀ = (z_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t with ε̂ the UNet's noise estimate (v-prediction models
    are converted to ε first); x̂₀ = z_t − σ_t · v̂ for flow matching. No guidance.

    Args:
        model: the loaded model; its state is left as it was.
        images: (B, 3, H, W) float in [0, 1], any H and W. Not modified.
        prompt: text condition (use the protection prompt).
        strength: in (0, 1]; the timestep is ``model.one_step_timestep(strength)``.
        generator: draws the posterior sample, then the noise; same seed → same output.
        reference_conventions: take the reference's timestep int(s·T) instead (at most T − 1);
            DDPM families only.

    Returns:
        (B, 3, H, W) in [0, 1], on the device and in the dtype of ``images``.
    """
    # 1. Check the inputs and choose the timestep.
    check_images(images)
    timestep = model.one_step_timestep(strength)
    if reference_conventions:
        check_reference_conventions(model)
        timestep = min(int(strength * model.num_train_timesteps), model.num_train_timesteps - 1)
    padded = pad_to_multiple(images.detach().float(), model.size_multiple)
    shape = model.latent_shape(padded)

    with model.frozen(), torch.no_grad():
        # 2. A posterior sample of the latent, as the pipelines take it, noised to t.
        posterior_noise = randn(shape, generator, device=model.device, dtype=model.dtype)
        latents = model.encode(padded, posterior_noise)
        timesteps = torch.full((shape[0],), timestep, dtype=torch.long, device=model.device)
        noise = randn(shape, generator, device=model.device, dtype=model.dtype)
        noisy = model.add_noise(latents, noise, timesteps)

        # 3. One denoiser call and the x̂₀ it implies.
        output = model.predict(noisy, timesteps, model.embed([prompt] * shape[0]))
        estimate = model.predict_start(noisy, timesteps, output)

        # 4. Decode; crop back to the caller's size, device and dtype.
        return to_caller(model.decode(estimate), images)


class _ReferenceStartDDIM(DDIMScheduler):
    """DDIM that noises one stride above the first step's timestep, as the reference code does.

    The pipelines call ``add_noise`` once, with the first denoising timestep τ[k−1]; the reference
    q-samples at τ[k] = τ[k−1] + T/N and then denoises from τ[k−1] all the same.
    """

    def add_noise(self, original_samples, noise, timesteps):
        stride = self.config.num_train_timesteps // self.num_inference_steps
        last = self.config.num_train_timesteps - 1  # strength 1 starts at T − 1 already
        return super().add_noise(original_samples, noise, (timesteps + stride).clamp(max=last))
