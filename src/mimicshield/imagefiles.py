"""Reading and writing images without losing what the user had: alpha, EXIF, ICC, originals.

Pixels leave this module as float (3, H, W) in [0, 1], displayed orientation (EXIF applied), sRGB
where the file says how to get there. Writing goes through a temporary file and an atomic rename,
so a full disk or a crash never leaves a half-written image, and never touches an input.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .filesystem import atomic_output

logger = logging.getLogger(__name__)

#: Larger images are refused (2048 × 2048 pixels): the whole image is optimised at once.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: Lossless formats we write; lossy ones would break the budget on disk.
OUTPUT_FORMATS = {"png": ".png", "tiff": ".tiff", "webp": ".webp"}
_SAVE_OPTIONS = {"png": {}, "tiff": {"compression": "tiff_deflate"}, "webp": {"lossless": True}}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class ImageFileError(Exception):
    """An image could not be read or written; the message names the file."""


@dataclass(frozen=True)
class LoadedImage:
    """One input image, ready for protection.

    Attributes:
        path: where it came from.
        pixels: (3, H, W) float32 in [0, 1], the colour the viewer sees.
        alpha: (H, W) uint8 alpha channel to write back untouched, or None.
        exif: EXIF bytes to carry over (orientation already applied), or None.
        icc_profile: ICC profile bytes of ``pixels``' colour space, or None.
        source_mode: the Pillow mode of the file ("RGB", "P", "I;16", "CMYK", ...).
    """

    path: Path
    pixels: torch.Tensor
    alpha: torch.Tensor | None
    exif: bytes | None
    icc_profile: bytes | None
    source_mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return tuple(self.pixels.shape[-2:])


def declared_size(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """(H, W) as the file's header declares it, without decoding the pixels.

    EXIF orientation is ignored (only the pixel count matters to callers: memory planning and
    size limits). Checked before anything is decoded, so a huge or hostile file costs nothing.

    Raises:
        ImageFileError: missing, empty, not an image, or more than ``max_pixels`` pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageFileError(f"{path}: the file is empty (0 bytes)")
    try:
        with _decoding_limit(max_pixels), Image.open(path) as opened:
            width, height = opened.size
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageFileError(_too_many_pixels(path, None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"{path}: corrupt or truncated image ({error})") from None
    if width * height > max_pixels:
        raise ImageFileError(_too_many_pixels(path, (width, height), max_pixels))
    return height, width


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read any Pillow-readable image as RGB [0, 1] plus its alpha, EXIF and ICC profile.

    Palette images keep their transparency as alpha, grayscale becomes gray RGB, 16-bit gray is
    scaled by 1/65535 (not truncated), CMYK goes through its ICC profile to sRGB when it has one.
    The declared size is checked against ``max_pixels`` before any pixel is decoded.

    Raises:
        ImageFileError: missing, empty, corrupt, unsupported or too large.
    """
    path = Path(path)
    declared_size(path, max_pixels=max_pixels)
    try:
        with _decoding_limit(max_pixels), Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            tags = image.getexif()
            exif = tags.tobytes() if len(tags) else None
            pixels, alpha, icc = _to_rgb(image)
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageFileError(_too_many_pixels(path, None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"{path}: corrupt or truncated image ({error})") from None
    return LoadedImage(path, pixels, alpha, exif, icc, opened.mode)


@contextlib.contextmanager
def _decoding_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit, raised to ``max_pixels`` while one file is opened.

    Pillow refuses files above twice its limit (≈ 179 million pixels) with an error and warns
    above it; a caller who allows more pixels has decided the file is wanted. The warning is
    silenced because the size is checked against ``max_pixels`` here anyway.
    """
    default = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if default is None else max(default, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = default


def _too_many_pixels(path: Path, size: tuple[int, int] | None, max_pixels: int) -> str:
    what = "declares more pixels" if size is None else f"is {size[0]}×{size[1]} pixels, more"
    return (
        f"{path}: {what} than the limit of {max_pixels} pixels; resize it first, or raise "
        "the pixel limit if the file is genuine"
    )


def _to_rgb(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, bytes | None]:
    """Pixels (3, H, W) in [0, 1], alpha (H, W) uint8 or None, ICC profile of the pixels."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64) / 65535.0
        gray = torch.from_numpy(array.clip(0, 1)).float()
        return gray.expand(3, *gray.shape).clone(), None, icc
    if mode == "F":
        raise ValueError("floating-point images (mode F) have no defined range")
    if mode == "CMYK":
        image, icc = _cmyk_to_srgb(image, icc), None
    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L") and "transparency" in image.info)
    converted = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(converted)
    pixels = torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255
    alpha = torch.from_numpy(array[..., 3].copy()) if has_alpha else None
    return pixels, alpha, icc


def _cmyk_to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Colour-manage CMYK to sRGB through its embedded profile; Pillow's naive formula otherwise."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError) as error:
            logger.warning("CMYK profile unusable (%s); using the naive conversion", error)
    return image.convert("RGB")


def to_uint8_array(levels: torch.Tensor, alpha: torch.Tensor | None) -> np.ndarray:
    """(3, H, W) uint8 levels (+ alpha) → (H, W, 3 or 4) array for Pillow."""
    channels = [levels] if alpha is None else [levels, alpha.unsqueeze(0)]
    return torch.cat(channels).permute(1, 2, 0).contiguous().numpy()


def write_image(
    path: str | os.PathLike,
    levels: torch.Tensor,
    source: LoadedImage,
    *,
    image_format: str = "png",
) -> None:
    """Write 8-bit RGB levels (3, H, W) uint8 with the source's alpha, EXIF and ICC profile.

    Written to a temporary file beside ``path`` and renamed into place, so a failed write leaves
    nothing behind. Refuses to write over the source file.

    Raises:
        ImageFileError: the write failed (disk full, permissions, ...) or would hit the source.
    """
    path = Path(path)
    if path.exists() and path.resolve() == source.path.resolve():
        raise ImageFileError(f"{path}: refusing to overwrite the original image")
    image = Image.fromarray(to_uint8_array(levels, source.alpha))
    options = dict(_SAVE_OPTIONS[image_format])
    if source.exif:
        options["exif"] = source.exif
    if source.icc_profile:
        options["icc_profile"] = source.icc_profile
    try:
        with atomic_output(path) as stream:
            image.save(stream, format=image_format.upper(), **options)
    except OSError as error:
        raise ImageFileError(f"{path}: could not be written ({error.strerror or error})") from None


def to_levels(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] → 8-bit levels (same shape, uint8), rounded to the nearest level."""
    return (pixels.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)


def write_png(path: str | os.PathLike, pixels: torch.Tensor) -> None:
    """Write generated RGB pixels (3, H, W) in [0, 1] as a plain 8-bit PNG, atomically.

    For images that come from no input file (mimicry outputs, generated samples): no alpha and
    no metadata to carry over.

    Raises:
        ImageFileError: the write failed.
    """
    write_levels_png(path, to_levels(pixels.cpu()))


def write_levels_png(path: str | os.PathLike, levels: torch.Tensor) -> None:
    """Write 8-bit RGB levels (3, H, W) uint8 as a plain PNG, atomically (see ``write_png``).

    Raises:
        ImageFileError: the write failed.
    """
    array = levels.cpu().permute(1, 2, 0).numpy()
    try:
        with atomic_output(path) as stream:
            Image.fromarray(array).save(stream, format="PNG")
    except OSError as error:
        raise ImageFileError(f"{path}: could not be written ({error.strerror or error})") from None


def read_back(path: str | os.PathLike) -> torch.Tensor:
    """The RGB pixels (3, H, W) in [0, 1] of a file we wrote, as a viewer would decode them."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """A mask image → (1, 1, H, W) float in [0, 1]: white = may be perturbed, black = keep."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            gray = np.asarray(ImageOps.exif_transpose(opened).convert("L"), dtype=np.float32)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"{path}: cannot read the mask ({error})") from None
    return torch.from_numpy(gray / 255).view(1, 1, *gray.shape)
