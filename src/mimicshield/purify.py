"""Purifiers: transformations a mimic may apply before mimicry, to test protection robustness.

Pure functions on (B, 3, H, W) float images in [0, 1], plus small frozen dataclasses that hold
their settings and are built from names like ``jpeg75`` by ``parse_purifier`` (DESIGN §4):

    none            no change
    jpeg<quality>   Pillow JPEG round trip at quality 1–100 (8-bit, Pillow's default 4:2:0 chroma)
    resize<factor>  antialiased bilinear downscale by factor in (0, 1], bilinear upscale back
    blur<sigma>     Gaussian blur, σ in pixels, kernel radius ⌊4σ + 0.5⌋, edges replicated
    noise<std>      additive Gaussian noise, std in 0–255 units, clipped to [0, 1]
    diffpure<s>     diffusion purification with the model at strength s in (0, 1]

Diffusion purification (after DiffPure, Nie et al. 2022, in latent space): encode to the
posterior mean, noise the latent to t = round(s·T) − 1, run deterministic DDIM (η = 0) down
the timesteps t, t − k, t − 2k, … ≥ 0 with the stride k = T // N of an N-step schedule (N =
``num_inference_steps``, 100 by default as in SDEdit, so about s·N steps), the last step landing
on the x̂₀ estimate (ᾱ = 1), and decode. With a single step it is a one-step x̂₀ reconstruction.
The condition is the empty prompt: a purifier does not know the image's prompt.

Each step re-noises x̂₀ with ε̂ to the next timestep through the model's own forward process
(``add_noise``), so one loop serves every family: for DDPM that is DDIM's update
√ᾱ'·x̂₀ + √(1 − ᾱ')·ε̂; for flow matching (SD3, FLUX) (1 − σ')·x̂₀ + σ'·ε̂ with x̂₀ = z − σ·v̂ and
ε̂ = z + (1 − σ)·v̂, which is exactly the Euler step z + (σ' − σ)·v̂ of their sampler.
"""

from __future__ import annotations

import abc
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .imagefiles import to_levels
from .models import LatentDiffusion
from .tensors import (
    check_images,
    check_positive,
    check_range,
    check_strength,
    gaussian_kernel1d,
    pad_to_multiple,
    randn,
    separable_filter,
)

# ---------------------------------------------------------------------- pure functions


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decompress each image with Pillow at ``quality`` (1–100).

    Args:
        images: (B, 3, H, W) in [0, 1]; rounded to 8 bits first, as a saved file would be.
        quality: Pillow JPEG quality, 1 (worst) to 100.

    Returns:
        (B, 3, H, W) multiples of 1/255, on the device and in the dtype of ``images``.
    """
    check_images(images)
    check_range(quality, "JPEG quality", 1, 100, whole=True)
    levels = to_levels(images.cpu())
    decoded = []
    for image in levels.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as reloaded:
            decoded.append(np.asarray(reloaded.convert("RGB")))
    result = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 255
    return result.to(images.device, images.dtype)


def resize(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by ``factor`` (antialiased bilinear) and upscale back to the original size.

    Args:
        images: (B, 3, H, W) in [0, 1].
        factor: in (0, 1]; the small size is max(1, round(factor · side)) per side.

    Returns:
        (B, 3, H, W) in [0, 1], same device and dtype.
    """
    check_images(images)
    check_range(factor, "resize factor", 0, 1, low_open=True)
    height, width = images.shape[-2:]
    small = (max(1, round(height * factor)), max(1, round(width * factor)))
    pixels = images.detach().float()
    down = F.interpolate(pixels, size=small, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)
    return up.clamp(0, 1).to(images.dtype)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with replicated edges (scipy.ndimage's ``mode="nearest"``).

    Args:
        images: (B, 3, H, W) in [0, 1].
        sigma: standard deviation in pixels, ≥ 0 (0 is the identity). The kernel is truncated at
            radius ⌊4σ + 0.5⌋, as scipy does.

    Returns:
        (B, 3, H, W) in [0, 1], same device and dtype; constant images stay constant.
    """
    check_images(images)
    check_range(sigma, "blur sigma", 0, math.inf)
    radius = int(4 * sigma + 0.5)
    if radius == 0:
        return images.detach().clone()
    taps = gaussian_kernel1d(2 * radius + 1, sigma, device=images.device, dtype=torch.float32)
    pixels = F.pad(images.detach().float(), (radius, radius, radius, radius), mode="replicate")
    return separable_filter(pixels, taps).clamp(0, 1).to(images.dtype)


def gaussian_noise(
    images: torch.Tensor, std: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, (std/255)²) noise per pixel and clip to [0, 1].

    Args:
        images: (B, 3, H, W) in [0, 1].
        std: standard deviation in 0–255 units (8 means 8/255), ≥ 0; 0 is the identity.
        generator: the noise source, drawn on its device (CPU by default) so results do not
            depend on the images' device; same seed → same output.

    Returns:
        (B, 3, H, W) in [0, 1], same device and dtype.
    """
    check_images(images)
    check_range(std, "noise std", 0, 255)
    noise = randn(images.shape, generator, device=images.device)
    noisy = images.detach().float() + noise * (std / 255)
    return noisy.clamp(0, 1).to(images.dtype)


def diffusion_purify(
    images: torch.Tensor,
    model: LatentDiffusion,
    *,
    strength: float,
    num_inference_steps: int = 100,
    prompt: str = "",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise each latent to t = round(s·T) − 1 and denoise it with DDIM (flow: Euler) to t = 0.

    Args:
        images: (B, 3, H, W) in [0, 1], any H and W (edge-padded to the VAE's multiple and
            cropped back). Not modified.
        model: the latent diffusion model (the one mimicry uses); its state is restored.
        strength: s in (0, 1], the fraction of the diffusion to undo.
        num_inference_steps: steps of a full schedule, fixing the stride T // N; about s · N of
            them are run (at least one).
        prompt: text condition; empty (unconditional) by default.
        generator: draws the forward-diffusion noise; same seed → same output.

    Returns:
        (B, 3, H, W) in [0, 1], on the device and in the dtype of ``images``.
    """
    # 1. Check the inputs; choose the start timestep and the DDIM timesteps down to 0.
    check_images(images)
    check_strength(strength, "diffusion purification strength")
    total = model.num_train_timesteps
    check_range(num_inference_steps, "num_inference_steps", 1, total, whole=True)
    stride = total // num_inference_steps
    timesteps = list(range(model.one_step_timestep(strength), -1, -stride))
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images.detach().float(), model.size_multiple)

    with model.frozen(), torch.no_grad():
        # 2. The latent (posterior mean: the purifier's only randomness is the noise), noised.
        latents = model.encode(padded)
        noise = randn(latents.shape, generator, device=latents.device, dtype=latents.dtype)
        batch = latents.shape[0]
        start_batch = torch.full((batch,), timesteps[0], dtype=torch.long, device=latents.device)
        latents = model.add_noise(latents, noise, start_batch)
        embeddings = model.embed([prompt] * batch)

        # 3. Deterministic DDIM (η = 0): x̂₀ and ε̂ at t, re-noised to the next timestep (the
        #    module docstring); the step after the last timestep lands on x̂₀.
        for timestep, following in zip(timesteps, [*timesteps[1:], None], strict=True):
            current = torch.full((batch,), timestep, dtype=torch.long, device=latents.device)
            output = model.predict(latents, current, embeddings)
            estimate = model.predict_start(latents, current, output)
            if following is None:
                latents = estimate
            else:
                noise_estimate = model.predicted_noise(output, latents, current)
                next_batch = torch.full_like(current, following)
                latents = model.add_noise(estimate, noise_estimate, next_batch)

        # 4. Decode; crop back to the caller's size, device and dtype.
        decoded = model.decode(latents)
    return decoded[..., :height, :width].to(images.device, images.dtype)


# ---------------------------------------------------------------------- configured purifiers


@dataclass(frozen=True)
class Purifier(abc.ABC):
    """A purifier with its settings, named ``<prefix><first setting>`` (e.g. ``jpeg75``).

    Call it as ``purifier(images, generator=..., model=...)``; ``model`` is needed only where
    ``needs_model`` is true (diffusion purification) and ignored elsewhere. Subclasses declare
    their settings as fields (the first is the one in the name) and implement ``apply``.
    """

    prefix: ClassVar[str]
    #: How the first setting is written after the prefix, for help and error messages.
    parameter_help: ClassVar[str] = ""
    #: Whether the first setting is a whole number (parsed with int, not float).
    whole_parameter: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False

    @classmethod
    def from_parameter(cls, text: str) -> Purifier:
        """Build from the text after the prefix (e.g. "75" for "jpeg75"); other settings default."""
        return cls(_parse_number(text, cls, whole=cls.whole_parameter))

    @property
    def name(self) -> str:
        """The name ``parse_purifier`` reads back (settings after the first at their defaults)."""
        value = getattr(self, fields(self)[0].name)
        short = f"{value:g}"
        # The short form unless it rounds (0.1234567 → 0.123457): names must read back exactly.
        return self.prefix + (short if float(short) == value else repr(value))

    @abc.abstractmethod
    def apply(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None,
        model: LatentDiffusion | None,
    ) -> torch.Tensor:
        """The purification itself; ``__call__`` has checked that a needed model is there."""

    def __call__(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        model: LatentDiffusion | None = None,
    ) -> torch.Tensor:
        """Purify (B, 3, H, W) images in [0, 1]; returns the same shape, device and dtype."""
        if self.needs_model and model is None:
            raise ValueError(f"the purifier '{self.name}' needs the model: pass model=")
        return self.apply(images, generator, model)


_Generator = torch.Generator | None
_Model = LatentDiffusion | None


@dataclass(frozen=True)
class NoPurification(Purifier):
    """The identity: the baseline row of a robustness table."""

    prefix: ClassVar[str] = "none"

    @classmethod
    def from_parameter(cls, text: str) -> Purifier:
        """The purifier for ``none``; ``text`` must be empty.

        Raises:
            ValueError: a parameter follows ``none``.
        """
        if text:
            raise ValueError(f"the purifier 'none' takes no parameter, got 'none{text}'")
        return cls()

    @property
    def name(self) -> str:
        """Always ``none``: there is no setting to append."""
        return "none"

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """A detached copy of ``images``, so the caller may modify the result freely."""
        check_images(images)
        return images.detach().clone()


@dataclass(frozen=True)
class JpegPurifier(Purifier):
    """``jpeg<quality>``: a Pillow JPEG round trip (see ``jpeg``)."""

    quality: int = 75  # Pillow quality 1–100; 75 is Pillow's own default

    prefix: ClassVar[str] = "jpeg"
    parameter_help: ClassVar[str] = "<quality 1-100>"
    whole_parameter: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range(self.quality, "JPEG quality", 1, 100, whole=True)

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """``jpeg`` at this quality; ``generator`` and ``model`` are unused."""
        return jpeg(images, self.quality)


@dataclass(frozen=True)
class ResizePurifier(Purifier):
    """``resize<factor>``: downscale and upscale back (see ``resize``)."""

    factor: float = 0.5  # side of the small image relative to the original, in (0, 1]

    prefix: ClassVar[str] = "resize"
    parameter_help: ClassVar[str] = "<factor in (0, 1]>"

    def __post_init__(self) -> None:
        check_range(self.factor, "resize factor", 0, 1, low_open=True)

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """``resize`` by this factor; ``generator`` and ``model`` are unused."""
        return resize(images, self.factor)


@dataclass(frozen=True)
class BlurPurifier(Purifier):
    """``blur<sigma>``: Gaussian blur with replicated edges (see ``gaussian_blur``)."""

    sigma: float = 1.0  # Gaussian standard deviation in pixels

    prefix: ClassVar[str] = "blur"
    parameter_help: ClassVar[str] = "<sigma in pixels>"

    def __post_init__(self) -> None:
        check_range(self.sigma, "blur sigma", 0, math.inf)

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """``gaussian_blur`` with this sigma; ``generator`` and ``model`` are unused."""
        return gaussian_blur(images, self.sigma)


@dataclass(frozen=True)
class NoisePurifier(Purifier):
    """``noise<std>``: additive Gaussian noise, clipped to [0, 1] (see ``gaussian_noise``)."""

    std: float = 8.0  # standard deviation in 0–255 units

    prefix: ClassVar[str] = "noise"
    parameter_help: ClassVar[str] = "<std in 0-255 units>"

    def __post_init__(self) -> None:
        check_range(self.std, "noise std", 0, 255)

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """``gaussian_noise`` with this std, drawn from ``generator``; ``model`` is unused."""
        return gaussian_noise(images, self.std, generator=generator)


@dataclass(frozen=True)
class DiffusionPurifier(Purifier):
    """``diffpure<strength>``: noise the latent, denoise it with DDIM (see ``diffusion_purify``)."""

    strength: float = 0.1  # fraction of the diffusion undone, in (0, 1]
    num_inference_steps: int = 100  # DDIM steps of a full schedule (as SDEdit's protocol)

    prefix: ClassVar[str] = "diffpure"
    parameter_help: ClassVar[str] = "<strength in (0, 1]>"
    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_strength(self.strength, "diffusion purification strength")
        check_positive(self.num_inference_steps, "num_inference_steps")

    def apply(self, images: torch.Tensor, generator: _Generator, model: _Model) -> torch.Tensor:
        """``diffusion_purify`` with ``model`` (required) and noise drawn from ``generator``."""
        return diffusion_purify(
            images,
            model,
            strength=self.strength,
            num_inference_steps=self.num_inference_steps,
            generator=generator,
        )


#: Name prefix → purifier class; ``parse_purifier`` reads "<prefix><parameter>".
PURIFIERS: dict[str, type[Purifier]] = {
    cls.prefix: cls
    for cls in (
        NoPurification,
        JpegPurifier,
        ResizePurifier,
        BlurPurifier,
        NoisePurifier,
        DiffusionPurifier,
    )
}


def parse_purifier(name: str) -> Purifier:
    """Build a purifier from a name such as ``jpeg75`` or ``diffpure0.1``.

    Names are ``<prefix><setting>`` (``none``, ``jpeg75``, ``resize0.5``, ``blur1``, ``noise8``,
    ``diffpure0.1``); case and surrounding spaces are ignored.

    Raises:
        ValueError: unknown prefix (the message lists the known forms) or a bad parameter.
    """
    text = name.strip().lower()
    # Longest prefix first, so a prefix that starts another one can never shadow it.
    for prefix in sorted(PURIFIERS, key=len, reverse=True):
        if text.startswith(prefix):
            return PURIFIERS[prefix].from_parameter(text[len(prefix) :])
    known = ", ".join(cls.prefix + cls.parameter_help for cls in PURIFIERS.values())
    raise ValueError(f"unknown purifier '{name}'; known forms: {known}")


# ---------------------------------------------------------------------- helpers


def _parse_number(text: str, cls: type[Purifier], *, whole: bool = False) -> int | float:
    kind = "a whole number" if whole else "a number"
    parse: Callable[[str], int | float] = int if whole else float
    try:
        return parse(text)
    except ValueError:
        raise ValueError(
            f"'{cls.prefix}' must be followed by {kind} {cls.parameter_help}, got "
            f"'{cls.prefix}{text}'"
        ) from None
