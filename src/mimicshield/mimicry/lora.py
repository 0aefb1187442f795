"""LoRA fine-tuning: low-rank adapters on the UNet's attention, learned from a few images.

Hu et al., "LoRA: low-rank adaptation of large language models", ICLR 2022, applied to Stable
Diffusion as diffusers' ``train_text_to_image_lora.py`` and ``train_dreambooth_lora.py`` do: a
peft ``LoraConfig`` (rank r, ``lora_alpha`` = r, Gaussian initialisation of A, B = 0) on every
attention projection of the UNet (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), trained in float32
with AdamW on the denoising loss in the model's own parameterisation under one fixed instance
prompt, every other weight frozen. An imitator does this to copy a style from a handful of images;
then samples with fixed prompts and seeds.

The shared model is left exactly as it was: ``installed_lora`` wraps the UNet's projections only
inside a ``with`` block and unwraps them afterwards, however the block ends. The learned weights
are saved the way diffusers saves them (``StableDiffusionPipeline.save_lora_weights`` with the
adapter's configuration as metadata), so a pipeline's ``load_lora_weights`` reads them back.

Settings: ``LoRAConfig()`` is quick (100 steps: seconds on the tiny test model, a minute or two on
the miniature on a CPU); ``LORA_PRESETS["gpu"]`` is the examples' recipe for real models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

from ..models import LatentDiffusion
from ..tensors import check_images, check_positive, randint
from ._common import text_to_image
from ._finetune import TrainingCallback, TrainingSet, check_training, fine_tune

#: The UNet modules that get adapters: the attention projections, as in diffusers' examples.
LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
#: The prompt of every training image; "sks" is a rare token, as in DreamBooth.
INSTANCE_PROMPT = "a painting in the style of sks"
#: The name the adapter has on the UNet while it is installed.
ADAPTER_NAME = "mimicshield-lora"
#: The file ``LoRAWeights.save`` writes (diffusers' default, which ``load_lora_weights`` looks for).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The name of the UNet flag that diffusers sets on a model when it first gets an adapter.
_PEFT_FLAG = "_hf_peft_config_loaded"


@dataclass(frozen=True)
class LoRAConfig:
    """How the adapters are trained.

    The defaults are quick; ``LORA_PRESETS["gpu"]`` holds the diffusers examples' values.
    """

    #: r, the rank of each adapter (the examples' ``--rank``, 4 by default; 4–16 are common).
    rank: int = 4
    #: Adapter scale numerator: the update is (alpha / r)·B·A; None means alpha = r (scale 1).
    alpha: float | None = None
    #: AdamW's constant step size (the examples' 1e-4).
    learning_rate: float = 1e-4
    #: Optimisation steps (quick; the examples use 500–1000 on a few images).
    steps: int = 100
    #: Images per step, drawn with replacement from the set.
    batch_size: int = 1
    #: The prompt of every training image (and the default sampling prompt).
    instance_prompt: str = INSTANCE_PROMPT
    #: Names (suffixes) of the UNet modules that get an adapter.
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES

    def __post_init__(self) -> None:
        check_positive(self.rank, "rank")
        check_training(self.steps, self.batch_size, self.learning_rate)
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    @property
    def lora_alpha(self) -> float:
        """The alpha the adapters use: ``alpha``, or the rank."""
        return float(self.rank if self.alpha is None else self.alpha)

    def peft_config(self) -> LoraConfig:
        """The adapters' peft configuration (Gaussian A, zero B: training starts at the base)."""
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(self.target_modules),
        )


#: Named settings: ``quick`` (tests, CPU, the miniature) and ``gpu`` (diffusers' LoRA examples).
LORA_PRESETS = {
    "quick": LoRAConfig(),
    "gpu": LoRAConfig(rank=4, learning_rate=1e-4, steps=500, batch_size=1),
}


@dataclass(frozen=True)
class LoRAWeights:
    """The result of ``train_lora``.

    Attributes:
        config: how the adapters were made (rank, alpha, modules, instance prompt).
        state_dict: adapter tensors in peft's naming (``…to_q.lora_A.weight``: (r, in),
            ``…lora_B.weight``: (out, r)), float32 on the CPU.
        losses: the loss of each training step.
    """

    config: LoRAConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    losses: tuple[float, ...] = ()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``LORA_WEIGHTS_FILE`` into ``folder`` with diffusers' ``save_lora_weights``.

        The adapter configuration goes into the file's metadata, so that a pipeline's
        ``load_lora_weights(folder)`` restores the same alpha as well as the weights.

        Returns:
            The path of the written file.
        """
        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(folder),
            unet_lora_layers=convert_state_dict_to_diffusers(self.state_dict),
            unet_lora_adapter_metadata=self.config.peft_config().to_dict(),
            weight_name=LORA_WEIGHTS_FILE,
            safe_serialization=True,
        )
        return Path(folder) / LORA_WEIGHTS_FILE


@contextlib.contextmanager
def installed_lora(
    model: LatentDiffusion,
    config: LoRAConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
) -> Iterator[list[torch.nn.Parameter]]:
    """Wrap ``model``'s UNet projections with adapters inside the block; unwrap them after.

    On exit, however the block ends, the UNet has its original modules, weights, gradient flags
    and attributes back.

    Args:
        model: the model; its UNet must carry no adapter already.
        config: rank, alpha and target modules of the adapters.
        state_dict: adapter weights in peft's naming (as ``LoRAWeights.state_dict``), or None for
            a fresh adapter (A Gaussian, drawn from the CPU generator seeded with ``seed``; B zero).
        seed: seeds a fresh adapter's initialisation.

    Yields:
        The adapter parameters, float32 and trainable.

    Raises:
        ValueError: the UNet already has adapters.
    """
    unet = model.unet
    if getattr(unet, "peft_config", None):
        raise ValueError(
            f"the model's UNet already has adapters ({', '.join(unet.peft_config)}); "
            "use a model without them"
        )
    had_flag, flag = _PEFT_FLAG in vars(unet), vars(unet).get(_PEFT_FLAG)
    # peft freezes every base weight when it adds an adapter; put the caller's flags back after.
    requires_grad = [(p, p.requires_grad) for p in unet.parameters()]
    # peft initialises A from torch's global generator: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config.peft_config(), adapter_name=ADAPTER_NAME)
    try:
        parameters = [p for name, p in unet.named_parameters() if ".lora_" in name]
        for parameter in parameters:
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        if state_dict is not None:
            _load_adapter(unet, state_dict)
        yield parameters
    finally:
        # Puts each wrapped module's original base layer back and drops the adapter config.
        unet.unload_lora()
        # ``unload_lora`` leaves the flag set on the instance; restore what was there.
        vars(unet).pop(_PEFT_FLAG, None)
        if had_flag:
            setattr(unet, _PEFT_FLAG, flag)
        for parameter, flag_before in requires_grad:
            parameter.requires_grad_(flag_before)


def _load_adapter(unet: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy adapter weights (peft naming, or diffusers' ``lora.down``/``lora.up``) into ``unet``."""
    peft_names = convert_unet_state_dict_to_peft(dict(state_dict))
    result = set_peft_model_state_dict(unet, peft_names, adapter_name=ADAPTER_NAME)
    # The load is not strict (the base weights are "missing"): check the adapters' own tensors.
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise ValueError(
            f"the LoRA weights do not fit this UNet: {len(unexpected)} tensors it does not have "
            f"and {len(missing)} adapter tensors missing (e.g. {example})"
        )


def train_lora(
    model: LatentDiffusion,
    images: torch.Tensor,
    config: LoRAConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> LoRAWeights:
    """Learn LoRA adapters of ``model``'s UNet from ``images``; the model is left unchanged.

    Args:
        model: the loaded model; frozen throughout, its weights, modules and flags as before.
        images: (N, 3, H, W) float in [0, 1], N >= 1, one size (edge-padded to the VAE's multiple).
        config: rank, alpha, learning rate, steps, batch size, prompt (``LoRAConfig()`` if None).
        generator: the only randomness (the adapters' initialisation, then each step's draws);
            same seed → same weights.
        callback: called after each step with (step, steps, loss).

    Returns:
        The adapter weights (float32, CPU), their configuration and the loss of each step.
    """
    config = LoRAConfig() if config is None else config
    check_images(images)
    seed = int(randint(0, 2**31 - 1, (), generator))
    with model.frozen():
        instances = TrainingSet.of(model, images, config.instance_prompt)
        with installed_lora(model, config, seed=seed) as parameters:
            losses = fine_tune(
                model,
                parameters,
                instances,
                steps=config.steps,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                generator=generator,
                callback=callback,
            )
            state_dict = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER_NAME)
            state_dict = {name: t.detach().float().cpu().clone() for name, t in state_dict.items()}
    return LoRAWeights(config, state_dict, losses)


def sample_lora(
    model: LatentDiffusion,
    weights: LoRAWeights,
    *,
    prompt: str | None = None,
    num_images: int = 4,
    height: int = 512,
    width: int = 512,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``num_images`` images with the adapters installed (text-to-image, DDIM, CFG).

    Args:
        model: the base model; as before afterwards.
        weights: the adapters.
        prompt: the prompt; None for the training prompt.
        num_images: how many images.
        height: their height in pixels (made at the next multiple of 8, then cropped).
        width: their width in pixels (likewise).
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free guidance weight (1 disables it).
        generator: the only randomness; same seed → same images.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    prompt = weights.config.instance_prompt if prompt is None else prompt
    with model.frozen(), installed_lora(model, weights.config, weights.state_dict):
        return text_to_image(
            model,
            prompt,
            num_images=num_images,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
        )


def lora(
    model: LatentDiffusion,
    images: torch.Tensor,
    *,
    config: LoRAConfig | None = None,
    prompt: str | None = None,
    num_images: int = 4,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> tuple[torch.Tensor, LoRAWeights]:
    """Fine-tune LoRA adapters on ``images``, then generate ``num_images`` at the images' size.

    Args:
        model: the loaded model; exactly as before afterwards.
        images: (N, 3, H, W) float in [0, 1]. Not modified.
        config: how the adapters are trained (``LoRAConfig()`` when None).
        prompt: the sampling prompt; None for the instance prompt.
        num_images: how many images to generate.
        num_inference_steps: DDIM steps of the generation.
        guidance_scale: classifier-free guidance weight of the generation (1 disables it).
        generator: the only randomness, used by training then generation.
        callback: training progress, (step, steps, loss).

    Returns:
        The generated images (num_images, 3, H, W) in [0, 1] on ``images``' device and in their
        dtype, and the adapter weights.
    """
    weights = train_lora(model, images, config, generator=generator, callback=callback)
    generated = sample_lora(
        model,
        weights,
        prompt=prompt,
        num_images=num_images,
        height=images.shape[-2],
        width=images.shape[-1],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    return generated.to(images.device, images.dtype), weights
