"""LoRA fine-tuning: low-rank adapters on the denoiser's attention, learned from a few images.

Hu et al., "LoRA: low-rank adaptation of large language models", ICLR 2022, applied to latent
diffusion as diffusers' DreamBooth LoRA examples (``train_dreambooth_lora{,_sdxl,_sd3,_flux}.py``)
do: a peft ``LoraConfig`` (rank r, ``lora_alpha`` = r, Gaussian initialisation of A, B = 0) on the
denoiser's projections that the family's example adapts (``LORA_TARGET_MODULES``), trained in
float32 with AdamW on the denoising loss in the model's own parameterisation (ε, v or flow
velocity) under one fixed instance prompt, every other weight frozen. An imitator does this to
copy a style from a handful of images; then samples with fixed prompts and seeds.

The shared model is left exactly as it was: ``installed_lora`` wraps the denoiser's projections
only inside a ``with`` block and unwraps them afterwards, however the block ends. The learned
weights are saved the way the family's pipeline saves them (its ``save_lora_weights``, the
adapter's configuration as metadata), so that pipeline's ``load_lora_weights`` reads them back.

Settings: ``LoRAConfig()`` is quick (100 steps: seconds on the tiny test model, a minute or two on
the miniature on a CPU); ``LORA_PRESETS["gpu"]`` is the examples' recipe for real models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

from ..models import LatentDiffusion
from ..models.loading import family_class
from ..tensors import check_images, check_positive, randint
from ._common import text_to_image
from ._finetune import TrainingCallback, TrainingSet, check_training, fine_tune

#: A UNet's attention projections (self- and cross-attention), what the SD and SDXL examples adapt.
UNET_ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")
#: A joint-attention transformer's projections of the image tokens (``to_*``) and of the text
#: tokens (``add_*_proj``, ``to_add_out``), what the SD3 example adapts.
JOINT_ATTENTION = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
#: The denoiser modules that get adapters, per family: the defaults of diffusers' DreamBooth LoRA
#: examples. FLUX's also adapts the double-stream blocks' feed-forward layers of both streams.
LORA_TARGET_MODULES = {
    "sd": UNET_ATTENTION,
    "sdxl": UNET_ATTENTION,
    "sd3": JOINT_ATTENTION,
    "flux": (
        *JOINT_ATTENTION,
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    ),
}
#: The prompt of every training image; "sks" is a rare token, as in DreamBooth.
INSTANCE_PROMPT = "a painting in the style of sks"
#: The name the adapter has on the denoiser while it is installed.
ADAPTER_NAME = "mimicshield-lora"
#: The file ``LoRAWeights.save`` writes (diffusers' default, which ``load_lora_weights`` looks for).
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The name of the flag that diffusers sets on a denoiser when it first gets an adapter.
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
    #: Names (suffixes) of the denoiser modules that get an adapter; None: the family's
    #: (``LORA_TARGET_MODULES``).
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_positive(self.rank, "rank")
        check_training(self.steps, self.batch_size, self.learning_rate)
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    @property
    def lora_alpha(self) -> float:
        """The alpha the adapters use: ``alpha``, or the rank."""
        return float(self.rank if self.alpha is None else self.alpha)

    def for_family(self, family: str) -> LoRAConfig:
        """This configuration with the target modules resolved for ``family`` ("sd", "sd3"…)."""
        if self.target_modules is not None:
            return self
        return replace(self, target_modules=LORA_TARGET_MODULES[family])

    def peft_config(self, family: str) -> LoraConfig:
        """The adapters' peft configuration on ``family``'s denoiser.

        A is Gaussian and B zero, so training starts at the base model.
        """
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(self.for_family(family).target_modules),
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
        family: the family of the model whose denoiser they fit ("sd", "sdxl", "sd3", "flux").
        state_dict: adapter tensors in peft's naming (``…to_q.lora_A.weight``: (r, in),
            ``…lora_B.weight``: (out, r)), float32 on the CPU.
        losses: the loss of each training step.
    """

    config: LoRAConfig
    family: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    losses: tuple[float, ...] = ()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``LORA_WEIGHTS_FILE`` into ``folder`` with the family's ``save_lora_weights``.

        As the family's example writes it: a UNet's adapters in diffusers' older naming
        (``lora.down``/``lora.up``), a transformer's in peft's; the adapter configuration goes
        into the file's metadata, so that the pipeline's ``load_lora_weights(folder)`` restores
        the same alpha as well as the weights.

        Returns:
            The path of the written file.
        """
        family = family_class(self.family)
        part = family.denoiser_name
        layers = self.state_dict
        if part == "unet":
            layers = convert_state_dict_to_diffusers(layers)
        family.pipeline_classes()["text2img"].save_lora_weights(
            save_directory=str(folder),
            weight_name=LORA_WEIGHTS_FILE,
            safe_serialization=True,
            **{
                f"{part}_lora_layers": layers,
                f"{part}_lora_adapter_metadata": self.config.peft_config(self.family).to_dict(),
            },
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
    """Wrap ``model``'s denoiser projections with adapters inside the block; unwrap them after.

    On exit, however the block ends, the denoiser (UNet or transformer) has its original modules,
    weights, gradient flags and attributes back.

    Args:
        model: the model; its denoiser must carry no adapter already.
        config: rank, alpha and target modules of the adapters (None: the family's).
        state_dict: adapter weights in peft's naming (as ``LoRAWeights.state_dict``), or None for
            a fresh adapter (A Gaussian, drawn from the CPU generator seeded with ``seed``; B zero).
        seed: seeds a fresh adapter's initialisation.

    Yields:
        The adapter parameters, float32 and trainable.

    Raises:
        ValueError: the denoiser already has adapters, or ``state_dict`` does not fit it.
    """
    denoiser, part = model.denoiser, model.denoiser_name
    if getattr(denoiser, "peft_config", None):
        raise ValueError(
            f"the model's {part} already has adapters ({', '.join(denoiser.peft_config)}); "
            "use a model without them"
        )
    had_flag, flag = _PEFT_FLAG in vars(denoiser), vars(denoiser).get(_PEFT_FLAG)
    # peft freezes every base weight when it adds an adapter; put the caller's flags back after.
    requires_grad = [(p, p.requires_grad) for p in denoiser.parameters()]
    # peft initialises A from torch's global generator: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(config.peft_config(model.family), adapter_name=ADAPTER_NAME)
    try:
        parameters = [p for name, p in denoiser.named_parameters() if ".lora_" in name]
        for parameter in parameters:
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        if state_dict is not None:
            _load_adapter(denoiser, part, state_dict)
        yield parameters
    finally:
        # Puts each wrapped module's original base layer back and drops the adapter config.
        denoiser.unload_lora()
        # ``unload_lora`` leaves the flag set on the instance; restore what was there.
        vars(denoiser).pop(_PEFT_FLAG, None)
        if had_flag:
            setattr(denoiser, _PEFT_FLAG, flag)
        for parameter, flag_before in requires_grad:
            parameter.requires_grad_(flag_before)


def _load_adapter(
    denoiser: torch.nn.Module, part: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Copy adapter weights (peft naming, or diffusers' ``lora.down``/``lora.up``) into place."""
    peft_names = convert_unet_state_dict_to_peft(dict(state_dict))
    result = set_peft_model_state_dict(denoiser, peft_names, adapter_name=ADAPTER_NAME)
    # The load is not strict (the base weights are "missing"): check the adapters' own tensors.
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise ValueError(
            f"the LoRA weights do not fit this {part}: {len(unexpected)} tensors it does not "
            f"have and {len(missing)} adapter tensors missing (e.g. {example})"
        )


def train_lora(
    model: LatentDiffusion,
    images: torch.Tensor,
    config: LoRAConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> LoRAWeights:
    """Learn LoRA adapters of ``model``'s denoiser from ``images``; the model is left unchanged.

    Args:
        model: the loaded model; frozen throughout, its weights, modules and flags as before.
        images: (N, 3, H, W) float in [0, 1], N >= 1, one size (edge-padded to the VAE's multiple).
        config: rank, alpha, learning rate, steps, batch size, prompt (``LoRAConfig()`` if None);
            the weights record it with the family's target modules filled in.
        generator: the only randomness (the adapters' initialisation, then each step's draws);
            same seed → same weights.
        callback: called after each step with (step, steps, loss).

    Returns:
        The adapter weights (float32, CPU), their configuration and the loss of each step.
    """
    config = (LoRAConfig() if config is None else config).for_family(model.family)
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
            state_dict = get_peft_model_state_dict(model.denoiser, adapter_name=ADAPTER_NAME)
            state_dict = {name: t.detach().float().cpu().clone() for name, t in state_dict.items()}
    return LoRAWeights(config, model.family, state_dict, losses)


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
    """Generate ``num_images`` images with the adapters installed (text-to-image, CFG).

    The family's text-to-image pipeline, with classifier-free guidance.

    Args:
        model: the base model, of the family the adapters were trained on; as before afterwards.
        weights: the adapters.
        prompt: the prompt; None for the training prompt.
        num_images: how many images.
        height: their height in pixels (made at the next multiple of the model's size multiple
            and of 8, then cropped).
        width: their width in pixels (likewise).
        num_inference_steps: sampler steps (DDIM; the flow families' Euler).
        guidance_scale: classifier-free guidance weight (1 disables it).
        generator: the only randomness; same seed → same images.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.

    Raises:
        ValueError: the adapters were trained on another family's denoiser.
    """
    if weights.family != model.family:
        raise ValueError(
            f"the LoRA weights were trained on a {weights.family} model; '{model.name}' is "
            f"{model.family}"
        )
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
        num_inference_steps: sampler steps of the generation.
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
