"""Fitting a protection run into a memory budget: batch size and precision.

Memory model (bytes) of one PGD step on ``batch`` images of H × W pixels each (after padding to
the model's ``size_multiple``):

    weights + FIXED_BYTES + batch · (H·W · PGD_BYTES_PER_PIXEL + activations(H, W))

``activations`` is what autograd keeps for one image, in the networks' element size:

- the VAE encoder's activations (always: every method backpropagates through the encoder),
  measured per pixel on Stable Diffusion 1.5's VAE and scaled by the VAE's width (its first
  block's channels; the 16-channel VAE of SD3 and FLUX has SD's widths);
- for methods that backpropagate through the denoiser (AdvDM, Mist), its activations, once per
  noise draw. A UNet's (SD 1.x/2.x, SDXL) are measured per pixel on SD 1.5's UNet and scaled by
  its width and by the latent cells per pixel. A transformer's (SD3, FLUX) are estimated from
  its size: tokens (image tokens H/16 · W/16 plus the text tokens it attends to jointly) ×
  hidden width × blocks × ``TRANSFORMER_BACKWARD_VALUES``. Score distillation runs the denoiser
  forward only, under no_grad, so it keeps nothing of it.

An ``Ensemble`` holds the weights of every member but the activations of one member at a time
(members are differentiated one after another within a step and their gradients add up in one
image gradient): its activations are the largest member's.

Assumptions, stated so that they can be checked:

- Activations scale linearly with pixels and with the batch: torch ≥ 2 attention (SDPA) needs
  memory linear in the tokens, and convolutions are linear.
- Activations scale with the element size of the network dtype (bf16/fp16 halve them); the
  perturbation, its gradient and the losses stay fp32 (``PGD_BYTES_PER_PIXEL``). SDXL's VAE stays
  float32 in float16 (its adapter upcasts it), so its encoder activations do too.
- The UNet-family constants were measured as peak-RSS increase on CPU
  (bench/calibrate_memory.py, fp32, 128² and 256²); they predict the measured 512² increase
  within +10 % (fp32) and +5 % (bf16). CUDA's caching allocator should behave alike for tensors
  this large; bench/gpu.sh re-measures.
- The transformer constant is an estimate from the layers of a block, NOT yet calibrated on a
  GPU (bench/gpu_families.sh will measure it on sd35-medium-random and flux-dev-random).

Levers not chosen by the planner, and why: attention slicing (with SDPA it *adds* memory: it
materialises score matrices slice by slice), VAE tiling (the backward pass still keeps every
tile's activations) and encoder gradient checkpointing (measured on CPU: the peak did not drop,
because most of the encoder's memory sits in its first, full-resolution block, which is
recomputed whole). All three remain explicit switches (``runtime.speed.SpeedOptions``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import torch

from ..models import Flux, LatentDiffusion
from ..models.ensemble import Ensemble, Surrogate
from ..models.flux import T5_TOKENS as FLUX_T5_TOKENS
from ..models.sd3 import T5_TOKENS as SD3_T5_TOKENS

GIB = 2**30

# Measured on sd15-random, fp32, CPU, 128² and 256² (bench/calibrate_memory.py, results in
# bench/README.md): slopes and intercept of the peak-RSS increase over image pixels.
#: fp32 images, perturbation, gradient and projection temporaries (≈ 12 tensors of 3 channels).
PGD_BYTES_PER_PIXEL = 3 * 4 * 12
#: The encoder's share: the measured sds- slope (15,120 B/pixel) less the PGD tensors.
SD15_ENCODER_BYTES_PER_PIXEL = 15_120.0 - PGD_BYTES_PER_PIXEL
#: Extra when the gradient runs through the UNet: measured advdm slope − sds- slope.
SD15_UNET_BACKWARD_BYTES_PER_PIXEL = 4_070.0
#: The intercept: per-run buffers that do not grow with the image (UNet forward workspace,
#: prompt embeddings, autograd bookkeeping), ≈ 340 MB measured.
FIXED_BYTES = 340 * 2**20
#: SD-1.5 widths the per-pixel constants were measured at.
_SD15_VAE_WIDTH, _SD15_UNET_WIDTH, _SD15_SCALE = 128, 320, 8
#: Values autograd keeps per token, hidden unit and block of a transformer denoiser (SD3's MMDiT,
#: FLUX's double and single-stream blocks), times the element size: an ESTIMATE, not yet
#: calibrated on a GPU (bench/gpu_families.sh will measure it). Counted from a pre-norm block
#: with adaptive modulation: the norm's input, output and modulated copy (3), q, k, v and their
#: q/k norms (5), attention output and its projection's input (2), gated residual (1), the second
#: norm (3), the 4×-wide MLP's hidden pre- and post-activation (8), its gated residual (1), and a
#: little slack for the attention kernel's saved statistics and the text stream's projections.
TRANSFORMER_BACKWARD_VALUES = 24
#: Share of the free memory the automatic budget uses: allocator fragmentation and the rest of
#: the process need the remainder.
AUTO_BUDGET_FRACTION = 0.85
#: The largest batch ``--batch-size auto`` considers (larger batches stop paying off on one GPU).
AUTO_MAX_BATCH = 8

_ELEMENT_SIZE = {"fp32": 4, "bf16": 2, "fp16": 2}


class MemoryPlanError(RuntimeError):
    """The run cannot fit the budget; the message says what would."""


@dataclass(frozen=True)
class TransformerSize:
    """What the memory model needs to know about a transformer denoiser (SD3, FLUX).

    Attributes:
        width: hidden size, heads × head dimension (1536 for SD3.5-medium, 3072 for FLUX.1).
        layers: blocks every token passes through (SD3: its joint blocks; FLUX: double-stream
            plus single-stream blocks).
        patch_size: latent cells per token along one side (2).
        text_tokens: text tokens attended to jointly with the image tokens (SD3: 77 CLIP + 256
            T5; FLUX.1: 512 T5).
    """

    width: int
    layers: int
    patch_size: int
    text_tokens: int

    @classmethod
    def of(cls, model: LatentDiffusion) -> TransformerSize:
        """Read the sizes from a loaded SD3 or FLUX model."""
        config = model.denoiser.config
        if isinstance(model, Flux):
            layers = config.num_layers + config.num_single_layers
            text_tokens = min(FLUX_T5_TOKENS, model.tokenizer_2.model_max_length)
        else:
            layers = config.num_layers
            text_tokens = model.tokenizer.model_max_length + SD3_T5_TOKENS
        return cls(
            width=config.num_attention_heads * config.attention_head_dim,
            layers=layers,
            patch_size=model.patch_size,
            text_tokens=text_tokens,
        )

    def backward_bytes(self, height: int, width: int, vae_scale_factor: int, element: int) -> int:
        """Activations one denoiser backward keeps for one (height × width)-pixel image."""
        side = vae_scale_factor * self.patch_size
        tokens = -(-height // side) * -(-width // side) + self.text_tokens
        return tokens * self.width * self.layers * TRANSFORMER_BACKWARD_VALUES * element


@dataclass(frozen=True)
class ModelSize:
    """What the memory model needs to know about one model.

    Exactly one of ``unet_width`` and ``transformer`` describes the denoiser.

    Attributes:
        parameters: parameters of all its networks together (VAE, denoiser, text encoders).
        vae_width: the VAE's first block channels (128 for every released family).
        vae_scale_factor: pixels per latent cell along one side (8 for the released families).
        unet_width: a UNet's first block channels (320 for SD 1.x/2.x and SDXL).
        transformer: a transformer denoiser's sizes (SD3, FLUX).
        vae_float32_in_float16: the VAE stays float32 when the rest is float16 (SDXL).
    """

    parameters: int
    vae_width: int
    vae_scale_factor: int
    unet_width: int | None = None
    transformer: TransformerSize | None = None
    vae_float32_in_float16: bool = False

    def __post_init__(self) -> None:
        if (self.unet_width is None) == (self.transformer is None):
            raise ValueError(
                "a ModelSize describes its denoiser by exactly one of unet_width and "
                f"transformer, got {self.unet_width!r} and {self.transformer!r}"
            )

    @classmethod
    def of(cls, model: LatentDiffusion) -> ModelSize:
        """Read the sizes from a loaded model's networks and configs."""
        is_unet = "block_out_channels" in model.denoiser.config
        return cls(
            parameters=sum(p.numel() for net in model.networks for p in net.parameters()),
            vae_width=model.vae.config.block_out_channels[0],
            vae_scale_factor=model.vae_scale_factor,
            unet_width=model.denoiser.config.block_out_channels[0] if is_unet else None,
            transformer=None if is_unet else TransformerSize.of(model),
            vae_float32_in_float16=model.vae_float32_in_float16,
        )

    @property
    def size_multiple(self) -> int:
        """What image sides are padded to: the VAE's factor times the denoiser's patch."""
        patch = 1 if self.transformer is None else self.transformer.patch_size
        return self.vae_scale_factor * patch

    def activation_bytes(
        self, height: int, width: int, dtype: str, unet_backward_draws: int
    ) -> int:
        """Activations autograd keeps for one image of height × width (padded) pixels.

        Args:
            height: pixels, a multiple of ``size_multiple``.
            width: pixels, a multiple of ``size_multiple``.
            dtype: ``fp32``, ``bf16`` or ``fp16``: the networks' precision.
            unet_backward_draws: noise draws per image differentiated through the denoiser.
        """
        element = _ELEMENT_SIZE[dtype]
        pixels = height * width
        vae_element = 4 if dtype == "fp16" and self.vae_float32_in_float16 else element
        encoder = SD15_ENCODER_BYTES_PER_PIXEL * self.vae_width / _SD15_VAE_WIDTH
        activations = pixels * encoder * vae_element / 4
        if not unet_backward_draws:
            return int(activations)
        if self.transformer is not None:
            denoiser = self.transformer.backward_bytes(
                height, width, self.vae_scale_factor, element
            )
        else:
            # The UNet runs on latent cells: (8 / f)² more of them per pixel than SD's f = 8.
            cells = (_SD15_SCALE / self.vae_scale_factor) ** 2
            per_pixel = SD15_UNET_BACKWARD_BYTES_PER_PIXEL * self.unet_width / _SD15_UNET_WIDTH
            denoiser = pixels * per_pixel * cells * element / 4
        return int(activations + denoiser * unet_backward_draws)


@dataclass(frozen=True)
class EnsembleSize:
    """The memory model of an ensemble: every member's weights, one member's activations.

    Attributes:
        members: each member's ``ModelSize``, in order.
    """

    members: tuple[ModelSize, ...]

    @property
    def parameters(self) -> int:
        """All members' parameters: every member stays loaded."""
        return sum(member.parameters for member in self.members)

    @property
    def size_multiple(self) -> int:
        """The least common multiple of the members' multiples."""
        return reduce(math.lcm, (member.size_multiple for member in self.members))

    def activation_bytes(
        self, height: int, width: int, dtype: str, unet_backward_draws: int
    ) -> int:
        """The largest member's: members are differentiated one after another."""
        return max(
            member.activation_bytes(height, width, dtype, unet_backward_draws)
            for member in self.members
        )


#: What the planner sizes: one model or an ensemble.
Size = ModelSize | EnsembleSize


def size_of(model: Surrogate) -> Size:
    """The ``ModelSize`` of a model, or the ``EnsembleSize`` of an ensemble."""
    if isinstance(model, Ensemble):
        return EnsembleSize(tuple(ModelSize.of(member) for member in model.models))
    return ModelSize.of(model)


@dataclass(frozen=True)
class MemoryPlan:
    """The chosen configuration and its estimated peak.

    Attributes:
        batch_size: images protected together.
        dtype: network precision (``fp32``, ``bf16``, ``fp16``).
        estimated_bytes: estimated peak of one step, weights included.
        budget_bytes: the budget it was fitted into.
    """

    batch_size: int
    dtype: str
    estimated_bytes: int
    budget_bytes: int

    def as_record(self) -> dict[str, object]:
        """The plan for the run's record, byte counts in GiB rounded to 3 decimals."""
        return {
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "estimated_gib": round(self.estimated_bytes / GIB, 3),
            "budget_gib": round(self.budget_bytes / GIB, 3),
        }


def estimate_bytes(
    size: Size,
    *,
    height: int,
    width: int,
    batch_size: int,
    dtype: str,
    unet_backward_draws: int,
) -> int:
    """Estimated peak bytes of one PGD step (see the module docstring for the model).

    Args:
        size: the model's ``ModelSize``, or an ensemble's ``EnsembleSize``.
        height: image height in pixels (padded up to the model's multiple here).
        width: image width in pixels (padded likewise).
        batch_size: images per step.
        dtype: ``fp32``, ``bf16`` or ``fp16``: the networks' weights and activations.
        unet_backward_draws: diffusion draws per image whose gradient runs through the denoiser
            (UNet or transformer): 0 for encoder-only methods (SDS, PhotoGuard), else the
            method's ``noise_samples`` (AdvDM, AdvDM−, Mist), each keeping its own activations.
    """
    multiple = size.size_multiple
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    per_image = height * width * PGD_BYTES_PER_PIXEL + size.activation_bytes(
        height, width, dtype, unet_backward_draws
    )
    return int(size.parameters * _ELEMENT_SIZE[dtype] + FIXED_BYTES + batch_size * per_image)


def plan_memory(
    size: Size,
    *,
    height: int,
    width: int,
    unet_backward_draws: int,
    budget_bytes: int,
    dtypes: tuple[str, ...] = ("fp32",),
    max_batch_size: int = 1,
    method_name: str = "this method",
) -> MemoryPlan:
    """Choose the first configuration that fits ``budget_bytes``, with the largest batch.

    Preference order: the given ``dtypes`` in order (the first is what the user asked for or the
    device's default; later ones are fallbacks). Within a precision, the largest batch up to
    ``max_batch_size`` that fits.

    Raises:
        MemoryPlanError: even one image does not fit; the message names what would.
    """
    for dtype in dtypes:
        common = dict(
            height=height, width=width, dtype=dtype, unet_backward_draws=unet_backward_draws
        )
        fitting = [
            batch
            for batch in range(1, max_batch_size + 1)
            if estimate_bytes(size, batch_size=batch, **common) <= budget_bytes
        ]
        if fitting:
            return MemoryPlan(
                batch_size=fitting[-1],
                dtype=dtype,
                estimated_bytes=estimate_bytes(size, batch_size=fitting[-1], **common),
                budget_bytes=budget_bytes,
            )
    raise MemoryPlanError(
        _what_would_fit(size, height, width, unet_backward_draws, budget_bytes, dtypes, method_name)
    )


def _what_would_fit(
    size: Size,
    height: int,
    width: int,
    unet_backward_draws: int,
    budget_bytes: int,
    dtypes: tuple[str, ...],
    method_name: str,
) -> str:
    """A sentence naming the smallest need and the changes that would fit."""
    leanest = dtypes[-1]
    smallest = dict(batch_size=1, dtype=leanest)
    need = estimate_bytes(
        size, height=height, width=width, unet_backward_draws=unet_backward_draws, **smallest
    )
    options: list[str] = []
    if leanest == "fp32":
        half = estimate_bytes(
            size,
            height=height,
            width=width,
            unet_backward_draws=unet_backward_draws,
            **{**smallest, "dtype": "bf16"},
        )
        if half <= budget_bytes:
            options.append(f"bf16 precision (≈ {half / GIB:.1f} GiB)")
    if unet_backward_draws > 1:
        one_draw = estimate_bytes(
            size, height=height, width=width, unet_backward_draws=1, **smallest
        )
        if one_draw <= budget_bytes:
            options.append(f"one noise sample per step (≈ {one_draw / GIB:.1f} GiB)")
    if unet_backward_draws:
        encoder_only = estimate_bytes(
            size, height=height, width=width, unet_backward_draws=0, **smallest
        )
        if encoder_only <= budget_bytes:
            options.append(
                "an encoder-only method such as sds- or photoguard "
                f"(≈ {encoder_only / GIB:.1f} GiB)"
            )
    side = _largest_square(size, unet_backward_draws, budget_bytes, smallest)
    if side:
        options.append(f"images of at most {side}×{side} pixels (resize first)")
    options.append(f"a memory budget of at least {need / GIB:.1f} GiB on a device that has it")
    return (
        f"{method_name} on {width}×{height} images needs ≈ {need / GIB:.1f} GiB even at batch 1 "
        f"in {leanest}, over the budget of {budget_bytes / GIB:.1f} GiB. Would fit: "
        + "; or ".join(options)
        + "."
    )


def _largest_square(size: Size, unet_backward_draws: int, budget_bytes: int, settings: dict) -> int:
    """The largest square side (multiple of the model's size multiple) that fits, or 0."""
    step = size.size_multiple
    low, high = 0, 1 << 16
    while high - low > step:
        middle = (low + high) // 2 // step * step
        fits = (
            estimate_bytes(
                size,
                height=middle,
                width=middle,
                unet_backward_draws=unet_backward_draws,
                **settings,
            )
            <= budget_bytes
        )
        low, high = (middle, high) if fits else (low, middle)
    return low


# ------------------------------------------------------------------------------ budgets

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``"8GiB"``, ``"8G"``, ``"512MB"``, ``"12"`` (GiB) → bytes (binary units throughout).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"a memory size looks like 8GiB or 512MiB, got '{text}'")
    value, unit = float(match.group(1)), match.group(2).lower() or "g"
    return int(value * 1024 ** "kmgt".index(unit) * 1024)


def automatic_budget(device: torch.device, *, resident_bytes: int = 0, sharers: int = 1) -> int:
    """A budget from what the device has free now.

    Args:
        device: where the run computes.
        resident_bytes: bytes of this run already on the device (the loaded weights), which
            the free figure no longer counts but the budget must.
        sharers: processes sharing the device's memory (CPU runs of one node share RAM).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_ram()
    return int((free * AUTO_BUDGET_FRACTION) / max(sharers, 1) + resident_bytes)


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo; total physical memory where that file does not exist."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
