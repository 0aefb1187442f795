"""Fitting a protection run into a memory budget: batch size and precision.

Memory model (bytes) of one PGD step on ``batch`` images of ``pixels`` = H·W pixels each (after
padding to the VAE's multiple):

    weights + FIXED_BYTES + batch · pixels · (activation_bytes_per_pixel · element_size / 4
                                             + PGD_BYTES_PER_PIXEL)

``activation_bytes_per_pixel`` is the fp32 cost of what autograd keeps for one pixel: the VAE
encoder's activations (always: every method backpropagates through the encoder) plus, for methods
that backpropagate through the UNet (AdvDM, Mist), the UNet's. It is measured on Stable Diffusion
1.5's architecture (``sd15-random``) and scaled to other models by their widths (base channel
counts) and, for the UNet, by the latent positions per pixel. Assumptions, stated so that they
can be checked:

- Activations scale linearly with pixels and with the batch: torch ≥ 2 attention (SDPA) needs
  memory linear in the tokens, and convolutions are linear.
- Activations scale with the element size of the network dtype (bf16/fp16 halve them); the
  perturbation, its gradient and the losses stay fp32 (``PGD_BYTES_PER_PIXEL``).
- The constants were measured as peak-RSS increase on CPU (bench/calibrate_memory.py, fp32,
  128² and 256²); they predict the measured 512² increase within +10 % (fp32) and +5 % (bf16).
  CUDA's caching allocator should behave alike for tensors this large; bench/gpu.sh re-measures.

Levers not chosen by the planner, and why: attention slicing (with SDPA it *adds* memory: it
materialises score matrices slice by slice), VAE tiling (the backward pass still keeps every
tile's activations) and encoder gradient checkpointing (measured on CPU: the peak did not drop,
because most of the encoder's memory sits in its first, full-resolution block, which is
recomputed whole). All three remain explicit switches (``runtime.speed.SpeedOptions``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import LatentDiffusion

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
#: Share of the free memory the automatic budget uses: allocator fragmentation and the rest of
#: the process need the remainder.
AUTO_BUDGET_FRACTION = 0.85
#: The largest batch ``--batch-size auto`` considers (larger batches stop paying off on one GPU).
AUTO_MAX_BATCH = 8

_ELEMENT_SIZE = {"fp32": 4, "bf16": 2, "fp16": 2}


class MemoryPlanError(RuntimeError):
    """The run cannot fit the budget; the message says what would."""


@dataclass(frozen=True)
class ModelSize:
    """What the memory model needs to know about a model.

    Attributes:
        parameters: parameters of the VAE, UNet and text encoder together.
        vae_width: the VAE's first block channels (128 for SD).
        unet_width: the UNet's first block channels (320 for SD 1.x/2.x).
        vae_scale_factor: pixels per latent cell along one side (8 for SD).
    """

    parameters: int
    vae_width: int
    unet_width: int
    vae_scale_factor: int

    @classmethod
    def of(cls, model: LatentDiffusion) -> ModelSize:
        """Read the sizes from a loaded model's networks and configs."""
        networks = model.networks
        return cls(
            parameters=sum(p.numel() for net in networks for p in net.parameters()),
            vae_width=model.vae.config.block_out_channels[0],
            unet_width=model.unet.config.block_out_channels[0],
            vae_scale_factor=model.vae_scale_factor,
        )


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
    size: ModelSize,
    *,
    height: int,
    width: int,
    batch_size: int,
    dtype: str,
    unet_backward_draws: int,
) -> int:
    """Estimated peak bytes of one PGD step (see the module docstring for the model).

    Args:
        size: the model's ``ModelSize``.
        height: image height in pixels (padded up to the VAE's multiple here).
        width: image width in pixels (padded likewise).
        batch_size: images per step.
        dtype: ``fp32``, ``bf16`` or ``fp16``: the networks' weights and activations.
        unet_backward_draws: diffusion draws per image whose gradient runs through the UNet:
            0 for encoder-only methods (SDS, PhotoGuard), else the method's ``noise_samples``
            (AdvDM, AdvDM−, Mist), each keeping its own UNet activations.
    """
    element = _ELEMENT_SIZE[dtype]
    multiple = size.vae_scale_factor
    pixels = (-(-height // multiple) * multiple) * (-(-width // multiple) * multiple)
    activations = SD15_ENCODER_BYTES_PER_PIXEL * size.vae_width / _SD15_VAE_WIDTH
    if unet_backward_draws:
        # The UNet runs on latent cells: (8 / f)² more of them per pixel than SD's f = 8.
        cells = (_SD15_SCALE / size.vae_scale_factor) ** 2
        activations += (
            SD15_UNET_BACKWARD_BYTES_PER_PIXEL
            * size.unet_width
            / _SD15_UNET_WIDTH
            * cells
            * unet_backward_draws
        )
    per_image = pixels * (activations * element / 4 + PGD_BYTES_PER_PIXEL)
    return int(size.parameters * element + FIXED_BYTES + batch_size * per_image)


def plan_memory(
    size: ModelSize,
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
    size: ModelSize,
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


def _largest_square(
    size: ModelSize, unet_backward_draws: int, budget_bytes: int, settings: dict
) -> int:
    """The largest square side (multiple of the VAE factor) that fits, or 0."""
    step = size.vae_scale_factor
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
