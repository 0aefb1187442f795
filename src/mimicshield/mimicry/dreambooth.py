"""DreamBooth: fine-tune the whole denoiser on a few images under one rare-token prompt; sample.

Ruiz et al., "DreamBooth: fine tuning text-to-image diffusion models for subject-driven
generation", CVPR 2023, as diffusers' ``train_dreambooth.py`` runs it (text encoder frozen): every
weight of the denoiser (the UNet; SD3's and FLUX's transformer, as ``train_dreambooth_sd3.py`` and
``train_dreambooth_flux.py`` do) is trained with AdamW at a small constant rate on the denoising
loss in the model's own parameterisation, every image under the instance prompt ("a painting in
the style of sks"). With prior preservation, class images that the *base* model generates from
the class prompt ("a painting") are trained on alongside, their loss weighted (1 in the paper),
so that the class keeps its meaning while the rare token takes the style.

The shared model is never modified: training runs on a private copy of its denoiser, in the
model's dtype (train a float32 model: half-precision weights round updates of 5e-6 away). The
copy serves sampling and is returned; nothing is written unless ``TunedDenoiser.save`` is called.

Settings: ``DreamBoothConfig()`` is quick (100 steps, no prior preservation);
``DREAMBOOTH_PRESETS["gpu"]`` holds the example's values for real models.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field

import torch

from ..models import LatentDiffusion
from ..tensors import check_guidance, check_images, check_positive
from ._common import text_to_image
from ._finetune import TrainingCallback, TrainingSet, check_training, fine_tune
from .lora import INSTANCE_PROMPT

logger = logging.getLogger(__name__)

#: The prompt of the class images of prior preservation: the class the instance belongs to.
CLASS_PROMPT = "a painting"
#: Class images generated per pipeline call (bounds the memory of generating hundreds).
CLASS_IMAGES_PER_CALL = 4


@dataclass(frozen=True)
class DreamBoothConfig:
    """How the denoiser copy is trained.

    The defaults are quick; ``DREAMBOOTH_PRESETS["gpu"]`` holds the diffusers example's values.
    """

    #: AdamW's constant step size (the example's 5e-6).
    learning_rate: float = 5e-6
    #: Optimisation steps (quick; the example trains 400, or 800 with prior preservation).
    steps: int = 100
    #: Instance images per step (and class images per step, with prior preservation).
    batch_size: int = 1
    #: The prompt of every training image (and the default sampling prompt).
    instance_prompt: str = INSTANCE_PROMPT
    #: The prompt the class images are generated from.
    class_prompt: str = CLASS_PROMPT
    #: Class images for prior preservation; 0 trains without it.
    num_class_images: int = 0
    #: Weight of the class images' loss (the paper's λ = 1).
    prior_loss_weight: float = 1.0
    #: Sampler steps of generating the class images.
    class_inference_steps: int = 50
    #: Classifier-free guidance of generating the class images.
    class_guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        check_training(self.steps, self.batch_size, self.learning_rate)
        if isinstance(self.num_class_images, bool) or not isinstance(self.num_class_images, int):
            raise ValueError(
                f"num_class_images must be a whole number, got {self.num_class_images!r}"
            )
        if self.num_class_images < 0:
            raise ValueError(f"num_class_images must be ≥ 0, got {self.num_class_images}")
        if not self.prior_loss_weight >= 0:
            raise ValueError(f"prior_loss_weight must be ≥ 0, got {self.prior_loss_weight}")
        check_positive(self.class_inference_steps, "class_inference_steps")
        check_guidance(self.class_guidance_scale)


#: Named settings: ``quick`` (tests, CPU, the miniature) and ``gpu`` (diffusers' DreamBooth
#: example with prior preservation: lr 5e-6, 800 steps, 200 class images, weight 1).
DREAMBOOTH_PRESETS = {
    "quick": DreamBoothConfig(),
    "gpu": DreamBoothConfig(learning_rate=5e-6, steps=800, num_class_images=200),
}


@dataclass(frozen=True)
class TunedDenoiser:
    """The result of ``train_dreambooth``.

    Attributes:
        config: how it was trained.
        part: the denoiser's part name, "unet" or "transformer" (as the pipelines take it).
        denoiser: the fine-tuned copy of the model's denoiser (the model's device and dtype, eval
            mode, no gradients), used by ``sample_dreambooth``.
        losses: the total loss of each training step.
    """

    config: DreamBoothConfig
    part: str
    denoiser: torch.nn.Module = field(repr=False)
    losses: tuple[float, ...] = ()

    def save(self, folder: str | os.PathLike) -> None:
        """Write the fine-tuned denoiser as a diffusers folder (as large as the model's own).

        A pipeline takes it back as its ``unet`` or ``transformer`` (``part``).
        """
        self.denoiser.save_pretrained(folder)


def class_images(
    model: LatentDiffusion,
    config: DreamBoothConfig,
    *,
    height: int,
    width: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The prior-preservation set: ``config.num_class_images`` generated by the base model.

    Returns:
        (num_class_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    batches = []
    with model.frozen():
        for start in range(0, config.num_class_images, CLASS_IMAGES_PER_CALL):
            count = min(CLASS_IMAGES_PER_CALL, config.num_class_images - start)
            batch = text_to_image(
                model,
                config.class_prompt,
                num_images=count,
                height=height,
                width=width,
                num_inference_steps=config.class_inference_steps,
                guidance_scale=config.class_guidance_scale,
                generator=generator,
            )
            batches.append(batch)
    return torch.cat(batches)


def train_dreambooth(
    model: LatentDiffusion,
    images: torch.Tensor,
    config: DreamBoothConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> TunedDenoiser:
    """Fine-tune a copy of ``model``'s denoiser on ``images``; the model itself is not touched.

    Args:
        model: the loaded model; its networks are only read (a float32 model is best: see the
            module's docstring).
        images: (N, 3, H, W) float in [0, 1], N >= 1, one size (edge-padded to the VAE's multiple).
        config: learning rate, steps, batch size, prompts, prior preservation
            (``DreamBoothConfig()`` when None).
        generator: the only randomness (class images, then each step's draws); same seed → same
            weights.
        callback: called after each step with (step, steps, loss).

    Returns:
        The fine-tuned denoiser copy, its configuration and the loss of each step.
    """
    # 1. Check the inputs; generate the class images with the base model, if any.
    config = DreamBoothConfig() if config is None else config
    check_images(images)
    if model.dtype != torch.float32:
        logger.warning(
            "DreamBooth trains the denoiser in the model's %s; updates of %g may be lost to "
            "rounding",
            model.dtype,
            config.learning_rate,
        )
    prior = None
    if config.num_class_images:
        generated = class_images(
            model, config, height=images.shape[-2], width=images.shape[-1], generator=generator
        )
        prior = TrainingSet.of(model, generated, config.class_prompt)

    # 2. A private copy of the denoiser, trainable; a view of the model that runs it.
    part = model.denoiser_name
    with model.frozen():
        denoiser = copy.deepcopy(model.denoiser).requires_grad_(True)
        tuned = model.with_parts(**{part: denoiser})
        instances = TrainingSet.of(model, images, config.instance_prompt)

        # 3. The loop of diffusers' example, every weight of the denoiser trained.
        losses = fine_tune(
            tuned,
            list(denoiser.parameters()),
            instances,
            steps=config.steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            generator=generator,
            prior=prior,
            prior_loss_weight=config.prior_loss_weight,
            callback=callback,
        )
    return TunedDenoiser(config, part, denoiser.eval().requires_grad_(False), losses)


def sample_dreambooth(
    model: LatentDiffusion,
    tuned: TunedDenoiser,
    *,
    prompt: str | None = None,
    num_images: int = 4,
    height: int = 512,
    width: int = 512,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``num_images`` images with the fine-tuned denoiser and the model's other parts.

    Args:
        model: the base model (VAE, text encoders, tokenizers, schedule); not modified.
        tuned: the fine-tuned denoiser (of ``model``'s family).
        prompt: the prompt; None for the instance prompt.
        num_images: how many images.
        height: their height in pixels (made at the next multiple of the model's size multiple
            and of 8, then cropped).
        width: their width in pixels (likewise).
        num_inference_steps: sampler steps (DDIM; the flow families' Euler).
        guidance_scale: classifier-free guidance weight (1 disables it).
        generator: the only randomness; same seed → same images.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    prompt = tuned.config.instance_prompt if prompt is None else prompt
    with model.frozen():
        return text_to_image(
            model,
            prompt,
            num_images=num_images,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            **{tuned.part: tuned.denoiser},
        )


def dreambooth(
    model: LatentDiffusion,
    images: torch.Tensor,
    *,
    config: DreamBoothConfig | None = None,
    prompt: str | None = None,
    num_images: int = 4,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> tuple[torch.Tensor, TunedDenoiser]:
    """Fine-tune a denoiser copy on ``images`` (DreamBooth), then generate at the images' size.

    Args:
        model: the loaded model; not modified.
        images: (N, 3, H, W) float in [0, 1]. Not modified.
        config: how the denoiser is trained (``DreamBoothConfig()`` when None).
        prompt: the sampling prompt; None for the instance prompt.
        num_images: how many images to generate.
        num_inference_steps: sampler steps of the generation.
        guidance_scale: classifier-free guidance weight of the generation (1 disables it).
        generator: the only randomness, used by training then generation.
        callback: training progress, (step, steps, loss).

    Returns:
        The generated images (num_images, 3, H, W) in [0, 1] on ``images``' device and in their
        dtype, and the fine-tuned denoiser.
    """
    tuned = train_dreambooth(model, images, config, generator=generator, callback=callback)
    generated = sample_dreambooth(
        model,
        tuned,
        prompt=prompt,
        num_images=num_images,
        height=images.shape[-2],
        width=images.shape[-1],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    return generated.to(images.device, images.dtype), tuned
