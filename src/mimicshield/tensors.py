"""Checks and small tensor helpers, shared by protection, mimicry, metrics and purifiers.

Every public function validates its arguments with the ``check_*`` functions here, so the
messages have one form everywhere: "<name> must <what is expected>, got <the actual value>".
Random draws go through ``randn``, ``rand`` and ``randint`` so that a seed gives the same numbers
whatever device the model is on. The blur purifier and SSIM share one Gaussian kernel and one
separable filter.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------- checks


def check_images(images: torch.Tensor, name: str = "images", *, channels: int | None = 3) -> None:
    """Raise ValueError unless ``images`` is a non-empty (B, C, H, W) float tensor in [0, 1].

    C must equal ``channels`` (RGB by default); None accepts any number of channels.
    """
    layout = f"(B, {'C' if channels is None else channels}, H, W)"
    is_tensor = isinstance(images, torch.Tensor)
    if not (is_tensor and images.dim() == 4 and channels in (None, images.shape[1])):
        shape = tuple(images.shape) if is_tensor else type(images).__name__
        raise ValueError(f"{name} must be a {layout} tensor, got {shape}")
    if 0 in images.shape:
        raise ValueError(
            f"{name} must hold at least one non-empty image, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:g}, {high:g}]")


def check_pair(images: torch.Tensor, references: torch.Tensor, *, channels: int | None = 3) -> None:
    """Both valid image batches of one shape (a pair metric compares image i with reference i)."""
    check_images(images, "images", channels=channels)
    check_images(references, "references", channels=channels)
    if images.shape != references.shape:
        raise ValueError(
            "images and references must have the same shape, got "
            f"{tuple(images.shape)} and {tuple(references.shape)}"
        )


def check_mask(mask: torch.Tensor, images: torch.Tensor) -> None:
    """Raise ValueError unless ``mask`` is (1 or B, 1, H, W) in [0, 1] for (B, 3, H, W) images."""
    batch, _, height, width = images.shape
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    ok = (
        mask.dim() == 4
        and mask.shape[1] == 1
        and mask.shape[0] in (1, batch)
        and tuple(mask.shape[-2:]) == (height, width)
    )
    if not ok:
        raise ValueError(
            f"mask must have shape (1 or {batch}, 1, {height}, {width}) to match the images, "
            f"got {tuple(mask.shape)}"
        )
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"mask must lie in [0, 1], got values in [{float(mask.min()):g}, {float(mask.max()):g}]"
        )


def check_range(
    value: float,
    name: str,
    low: float,
    high: float,
    *,
    whole: bool = False,
    low_open: bool = False,
) -> None:
    """Raise ValueError unless ``value`` is a finite number in [low, high].

    ``low_open`` excludes ``low``; ``whole`` asks for a whole number. Bools are refused, though
    Python counts them as ints: ``True`` is never a meaningful setting.
    """
    kind = numbers.Integral if whole else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or math.isnan(value):
        raise ValueError(f"{name} must be a {'whole ' if whole else ''}number, got {value!r}")
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high) or math.isinf(value):
        opening, closing = "(" if low_open else "[", "]" if math.isfinite(high) else ")"
        interval = f"{opening}{low:g}, {high:g}{closing}"
        raise ValueError(f"{name} must lie in {interval}, got {value:g}")


def check_positive(value: int, name: str) -> None:
    """Raise ValueError unless ``value`` is a whole number ≥ 1 (a count: steps, samples, sizes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")


def check_strength(strength: float, name: str = "strength") -> None:
    """Raise ValueError unless ``strength``, the fraction of the diffusion re-run, is in (0, 1]."""
    check_range(strength, name, 0, 1, low_open=True)


def check_guidance(guidance_scale: float) -> None:
    """Raise ValueError unless the classifier-free guidance scale is finite and ≥ 0 (1 = none)."""
    check_range(guidance_scale, "guidance_scale", 0, math.inf)


# ---------------------------------------------------------------------- random draws


def draw_device(generator: torch.Generator | None) -> torch.device:
    """The device random draws happen on: the generator's, or the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal draw of ``shape``, made on the generator's device, then moved.

    Like diffusers' ``randn_tensor``: drawing where the generator lives (in the default float
    dtype) makes the numbers depend on the seed only, not on the target ``device``/``dtype``
    (None keeps the generator's device and the default dtype).
    """
    drawn = torch.randn(shape, generator=generator, device=draw_device(generator))
    return drawn.to(device=device, dtype=dtype)


def rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform draw in [0, 1) of ``shape``, on the generator's device, then moved (as ``randn``)."""
    drawn = torch.rand(shape, generator=generator, device=draw_device(generator))
    return drawn.to(device=device, dtype=dtype)


def randint(
    low: int,
    high: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Whole numbers uniform in [low, high) (int64) of ``shape``, drawn as ``randn`` draws."""
    drawn = torch.randint(low, high, shape, generator=generator, device=draw_device(generator))
    return drawn.to(device=device)


# ---------------------------------------------------------------------- filters and padding


def gaussian_kernel1d(
    size: int,
    sigma: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Normalised Gaussian taps (size,) at offsets −(size − 1)/2 … (size − 1)/2, σ in pixels.

    Computed in float64 whatever ``dtype`` (the taps sum to one to the double) and cast at the
    end, so a blur in float32 and a metric in float64 use the same kernel. ``size`` is odd.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and ≥ 1, got {size}")
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype)


def separable_filter(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter each channel with ``taps`` along the width, then along the height, unpadded.

    Args:
        images: (B, C, H, W), in the dtype of ``taps``; pad first for an output of input size.
        taps: (k,) one-dimensional kernel.

    Returns:
        (B, C, H − k + 1, W − k + 1): only the pixels whose whole window lies inside ``images``.
    """
    channels, size = images.shape[1], taps.numel()
    rows = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)
    columns = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), columns, groups=channels)


def pad_to_multiple(
    tensor: torch.Tensor, multiple: int, value: float | None = None
) -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of ``multiple`` (the VAE's downsampling factor).

    Edge-replicated by default (the encoder sees no artificial border); ``value`` pads with a
    constant instead (masks). Callers crop back to the original size.
    """
    height, width = tensor.shape[-2:]
    pad = (0, -width % multiple, 0, -height % multiple)
    if pad == (0, 0, 0, 0):
        return tensor
    if value is None:
        return F.pad(tensor, pad, mode="replicate")
    return F.pad(tensor, pad, value=value)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) → (B, C, *size): bicubic, antialiased when shrinking; values not clipped.

    The resampling of working-resolution and coarse-stage protection (``resolution`` explains
    the choice of kernel); ``images`` itself is returned when it already has that size.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
