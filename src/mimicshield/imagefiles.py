"""Reading and writing images without losing what the user had, the originals included.

What is kept: frames, bit depth, alpha, metadata (EXIF, ICC, XMP, PNG text, DPI).

Pixels leave this module as float (F, 3, H, W) in [0, 1] (F frames or pages; F = 1 for a still
image), displayed orientation (EXIF applied), sRGB where the file says how to get there. Writing
goes through a temporary file and an atomic rename, so a full disk or a crash never leaves a
half-written image, and never touches an input.

What each input becomes by default (``default_output_format``): lossless files keep their format
(PNG and APNG → PNG, TIFF → TIFF, lossless WebP → WebP), everything else becomes PNG: JPEG and
lossy WebP (a lossy file would not hold the budget), BMP, and GIF, whose 256-colour palette cannot
hold a protection's fine colour changes (animated GIFs become animated PNGs). 16-bit colour needs
TIFF: Pillow cannot write 16-bit colour PNG, so a 16-bit colour PNG becomes a 16-bit TIFF.
A multi-picture JPEG (MPO: phones store HDR gain maps and previews this way, stereo cameras a
second view) gives its primary picture only; the others are not protected and not kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from .filesystem import atomic_output
from .tensors import check_range

logger = logging.getLogger(__name__)

#: Larger images are refused (100 megapixels): a safety limit on decoding and pixel buffers
#: (each float copy of such an image takes 1.2 GB), not on protection, which handles images too
#: large for memory at a working resolution or in tiles.
DEFAULT_MAX_PIXELS = 100_000_000
#: Formats we write and their suffixes; JPEG only on request (it changes the protected pixels).
OUTPUT_FORMATS = {"png": ".png", "tiff": ".tiff", "webp": ".webp", "jpeg": ".jpg"}
#: Formats that store exactly the levels given to them.
LOSSLESS_FORMATS = ("png", "tiff", "webp")
#: Pillow's JPEG quality used when none is given (1–100).
DEFAULT_JPEG_QUALITY = 95
#: The kinds of metadata carried over, in the order records list them.
METADATA_KINDS = ("exif", "icc_profile", "xmp", "text", "dpi")

_SIXTEEN_BIT_GRAY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_LOSSY_FORMATS = {"JPEG", "MPO"}
#: Frame timing is kept for these formats; TIFF pages and MPO pictures have none.
_ANIMATED_FORMATS = {"GIF", "PNG", "WEBP"}
#: Disposal by name, format-neutral: what happens to a frame's area before the next one.
_GIF_DISPOSAL = {0: "none", 1: "none", 2: "background", 3: "previous"}
_APNG_DISPOSAL = {"none": 0, "background": 1, "previous": 2}
#: Metadata each writer can store ("tiff16": 16-bit colour TIFF through tifffile).
_WRITABLE_KINDS = {
    "png": {"exif", "icc_profile", "xmp", "text", "dpi"},
    "tiff": {"exif", "icc_profile", "xmp", "dpi"},
    "tiff16": {"icc_profile", "xmp", "dpi"},
    "webp": {"exif", "icc_profile", "xmp"},
    "jpeg": {"exif", "icc_profile", "xmp", "dpi"},
}
_PNG_XMP_KEY = "XML:com.adobe.xmp"
_EXIF_ORIENTATION = 0x0112
#: EXIF orientations that turn the picture by a quarter (transpose, 90°, transverse, 270°).
_QUARTER_TURNS = {5, 6, 7, 8}
_TIFF_XMP_TAG = 700


class ImageFileError(Exception):
    """An image could not be read or written; the message names the file."""


@dataclass(frozen=True)
class Metadata:
    """What a file says about itself besides its pixels.

    Attributes:
        exif: EXIF bytes, orientation already applied to the pixels and the tag reset; or None.
        icc_profile: ICC profile of the pixels' colour space, or None.
        xmp: XMP packet (UTF-8 XML bytes), orientation reset like EXIF's; or None.
        text: PNG text chunks (tEXt, zTXt, iTXt) by keyword, e.g. {"Author": "..."}.
        dpi: (horizontal, vertical) dots per inch, or None.
    """

    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    text: dict[str, str] = field(default_factory=dict)
    dpi: tuple[float, float] | None = None

    def kinds(self) -> list[str]:
        """The kinds present, in ``METADATA_KINDS`` order."""
        return [kind for kind in METADATA_KINDS if getattr(self, kind)]

    def only(self, kinds: set[str] | list[str]) -> Metadata:
        """A copy holding only ``kinds``; the others emptied."""
        return Metadata(**{kind: getattr(self, kind) for kind in kinds})


@dataclass(frozen=True)
class Animation:
    """Timing of an animated file (GIF, APNG, WebP), one entry per frame where per-frame.

    Attributes:
        durations_ms: display time of each frame in milliseconds.
        loop: times the animation loops (0: forever), or None when the file says nothing (a
            GIF without a loop extension plays once).
        disposal: per frame "none", "background" or "previous", where the format records it.
    """

    durations_ms: tuple[float, ...]
    loop: int | None
    disposal: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LoadedImage:
    """One input file, ready for protection.

    Attributes:
        path: where it came from.
        frames: (F, 3, H, W) float32 in [0, 1], the colour the viewer sees; F frames or pages.
        alpha: (F, H, W) alpha levels to write back untouched (uint8, or int32 holding 16-bit
            levels for 16-bit colour files), or None.
        metadata: EXIF, ICC, XMP, PNG text and DPI to carry over.
        source_mode: the Pillow mode of the file ("RGB", "P", "I;16", "CMYK", ...).
        source_format: Pillow's name of the file's format ("PNG", "GIF", "JPEG", ...).
        bit_depth: 8 or 16, the levels per sample of the file.
        lossy: whether the file's own codec was lossy (JPEG, lossy WebP).
        animation: frame timing of animated files; None for stills and TIFF pages.
    """

    path: Path
    frames: torch.Tensor
    alpha: torch.Tensor | None = None
    metadata: Metadata = field(default_factory=Metadata)
    source_mode: str = "RGB"
    source_format: str = "PNG"
    bit_depth: int = 8
    lossy: bool = False
    animation: Animation | None = None

    @property
    def pixels(self) -> torch.Tensor:
        """(3, H, W): the first frame, for callers that take one picture per file."""
        return self.frames[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels, shared by all frames."""
        return tuple(self.frames.shape[-2:])

    @property
    def frame_count(self) -> int:
        """F: frames of an animation, pages of a TIFF, 1 for a still image."""
        return self.frames.shape[0]

    @property
    def gray(self) -> bool:
        """Whether the file has one 16-bit gray channel (kept gray when written at 16 bits)."""
        return self.source_mode in _SIXTEEN_BIT_GRAY_MODES


@dataclass(frozen=True)
class OutputPlan:
    """How one protected file is written (``plan_output``).

    Attributes:
        image_format: one of ``OUTPUT_FORMATS``.
        bit_depth: 8 or 16 levels per sample; 16 only where the source is 16-bit and the format
            can hold it (TIFF, and PNG for gray).
        gray: one gray channel (a 16-bit gray source written at 16 bits).
        metadata: what will be written.
        metadata_report: {"kept": [...], "stripped": [...], "dropped": [...]} kinds; "dropped"
            are kinds the output format cannot store.
        quality: JPEG quality, None for the lossless formats.
    """

    image_format: str
    bit_depth: int
    gray: bool
    metadata: Metadata
    metadata_report: dict[str, list[str]]
    quality: int | None = None

    @property
    def levels(self) -> int:
        """The largest level of a sample: 255 or 65535."""
        return 255 if self.bit_depth == 8 else 65535


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
    """Read every frame of any Pillow-readable image as RGB [0, 1], with alpha, timing, metadata.

    Palette images keep their transparency as alpha, grayscale becomes gray RGB, 16-bit samples
    (gray or colour) are scaled by 1/65535 (not truncated), CMYK goes through its ICC profile to
    sRGB when it has one. Animated files and multi-page TIFFs give all their frames, each the
    full picture a viewer shows at that moment. The declared size is checked against
    ``max_pixels`` before any pixel is decoded.

    Raises:
        ImageFileError: missing, empty, corrupt, unsupported or too large.
    """
    path = Path(path)
    declared_size(path, max_pixels=max_pixels)
    try:
        with _decoding_limit(max_pixels), Image.open(path) as opened:
            return _load(opened, path)
    except UnidentifiedImageError:
        raise ImageFileError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageFileError(_too_many_pixels(path, None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageFileError(f"{path}: corrupt or truncated image ({error})") from None


def default_output_format(path: str | os.PathLike) -> str:
    """The format a protected copy of ``path`` is written in by default (module docstring).

    Reads the header only; a file that cannot be opened gets "png" (it fails by name when read).
    """
    try:
        with Image.open(path) as opened:
            return _default_format(opened.format, _is_lossy(opened), _sixteen_bit_colour(opened))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return "png"


def check_output_settings(image_format: str | None, quality: int) -> None:
    """Refuse an output format or a JPEG quality that no output can be written with.

    The format must be one of ``OUTPUT_FORMATS`` (None: each input keeps its own), the quality a
    whole number in 1–100.

    Raises:
        ValueError: naming the value and what is allowed.
    """
    if image_format is not None and image_format not in OUTPUT_FORMATS:
        choices = ", ".join(OUTPUT_FORMATS)
        raise ValueError(f"output format must be one of {choices}, got {image_format!r}")
    check_range(quality, "JPEG quality", 1, 100, whole=True)


def plan_output(
    source: LoadedImage,
    image_format: str | None = None,
    *,
    strip_metadata: bool = False,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> OutputPlan:
    """Decide format, bit depth and metadata of the protected copy of ``source``.

    Args:
        source: the input.
        image_format: one of ``OUTPUT_FORMATS``, or None for ``default_output_format``'s rule.
        strip_metadata: drop EXIF, XMP, text and DPI. The ICC profile stays: the pixels are in
            its colour space, and without it viewers would show other colours.
        quality: JPEG quality 1–100 (ignored for lossless formats).

    Raises:
        ImageFileError: JPEG was asked for a file with transparency or several frames.
        ValueError: an unknown format or a quality out of range.
    """
    fmt = image_format or _default_format(
        source.source_format, source.lossy, source.bit_depth == 16 and not source.gray
    )
    check_output_settings(fmt, quality)
    if fmt == "jpeg":
        _check_jpeg_can_hold(source)
    sixteen = source.bit_depth == 16 and (fmt == "tiff" or (fmt == "png" and source.gray))
    writer = "tiff16" if sixteen and not source.gray else fmt
    present = source.metadata.kinds()
    stripped = [kind for kind in present if strip_metadata and kind != "icc_profile"]
    kept = [k for k in present if k not in stripped and k in _WRITABLE_KINDS[writer]]
    dropped = [k for k in present if k not in stripped and k not in kept]
    return OutputPlan(
        image_format=fmt,
        bit_depth=16 if sixteen else 8,
        gray=sixteen and source.gray,
        metadata=source.metadata.only(kept),
        metadata_report={"kept": kept, "stripped": stripped, "dropped": dropped},
        quality=quality if fmt == "jpeg" else None,
    )


def _default_format(source_format: str | None, lossy: bool, sixteen_bit_colour: bool) -> str:
    if lossy:
        return "png"
    if source_format == "TIFF" or sixteen_bit_colour:
        return "tiff"  # Pillow cannot write 16-bit colour PNG; TIFF keeps all 16 bits
    return "webp" if source_format == "WEBP" else "png"


def _check_jpeg_can_hold(source: LoadedImage) -> None:
    if source.alpha is not None or source.frame_count > 1:
        what = "transparency" if source.alpha is not None else f"{source.frame_count} frames"
        raise ImageFileError(
            f"{source.path}: has {what}, which JPEG cannot hold; choose a lossless output format"
        )


def _load(opened: Image.Image, path: Path) -> LoadedImage:
    """All frames of an open file, decoded (see ``read_image``)."""
    # Asked before decoding: Pillow may close a still image's file once it is loaded.
    mode, lossy, sixteen_colour = opened.mode, _is_lossy(opened), _sixteen_bit_colour(opened)
    images, lows, durations, disposals = [], [], [], []
    metadata = Metadata()
    for index in range(_pictures_to_read(opened, path)):
        opened.seek(index)
        frame = ImageOps.exif_transpose(opened)  # a loaded copy, orientation applied
        if index == 0:
            metadata = _metadata(opened, frame)
        images.append(frame)
        lows.append(_low_bytes(path, index) if sixteen_colour else None)
        durations.append(float(frame.info.get("duration") or 0))
        disposals.append(_disposal(opened, frame))
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        listing = ", ".join(f"{width}×{height}" for width, height in sizes)
        raise ImageFileError(f"{path}: its frames or pages differ in size ({listing})")
    has_alpha = any(_has_alpha(image) for image in images)
    decoded = [
        _frame_pixels(image, low, has_alpha) for image, low in zip(images, lows, strict=True)
    ]
    animated = opened.format in _ANIMATED_FORMATS and len(images) > 1
    return LoadedImage(
        path=path,
        frames=torch.stack([pixels for pixels, _ in decoded]),
        alpha=torch.stack([alpha for _, alpha in decoded]) if has_alpha else None,
        metadata=metadata,
        source_mode=mode,
        source_format=opened.format or "unknown",
        bit_depth=16 if sixteen_colour or mode in _SIXTEEN_BIT_GRAY_MODES else 8,
        lossy=lossy,
        animation=Animation(
            durations_ms=tuple(durations),
            loop=opened.info.get("loop"),
            disposal=None if None in disposals else tuple(disposals),
        )
        if animated
        else None,
    )


def _pictures_to_read(opened: Image.Image, path: Path) -> int:
    """How many frames or pages of ``opened`` to decode: all, except for an MPO (see above).

    An MPO's further pictures are no frames of one image: an HDR gain map or a preview (often
    at another size) or the second view of a stereo pair; protecting them as an animation
    would make a phone photo unreadable or a moving picture.
    """
    count = getattr(opened, "n_frames", 1)
    if opened.format == "MPO" and count > 1:
        logger.warning(
            "%s: a multi-picture JPEG (MPO) with %d pictures; only the primary one is protected "
            "and written, the others (gain map, preview or second view) are left out",
            path,
            count,
        )
        return 1
    return count


def _metadata(opened: Image.Image, first: Image.Image) -> Metadata:
    """Metadata of the first frame, after ``exif_transpose`` reset the orientation in it."""
    tags = first.getexif()
    xmp = first.info.get("xmp")
    text = {
        str(key): str(value)
        for key, value in getattr(opened, "text", {}).items()
        if key != _PNG_XMP_KEY  # the XMP packet, carried as XMP
    }
    dpi = first.info.get("dpi")
    if dpi and opened.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
        dpi = (dpi[1], dpi[0])  # the pixels were turned a quarter: width and height swapped
    return Metadata(
        exif=tags.tobytes() if len(tags) else None,
        icc_profile=None if opened.mode == "CMYK" else first.info.get("icc_profile") or None,
        xmp=(xmp.encode() if isinstance(xmp, str) else xmp) or None,
        text=text,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
    )


def _disposal(opened: Image.Image, frame: Image.Image) -> str | None:
    """The current frame's disposal by name (GIF and APNG record one; others do not)."""
    if opened.format == "GIF":
        return _GIF_DISPOSAL.get(getattr(opened, "disposal_method", 0), "none")
    if opened.format == "PNG" and "disposal" in frame.info:
        names = {number: name for name, number in _APNG_DISPOSAL.items()}
        return names.get(int(frame.info["disposal"]), "none")
    return None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in ("P", "L") and "transparency" in image.info)


def _is_lossy(opened: Image.Image) -> bool:
    """Whether the file's codec was lossy: JPEG, or a WebP holding any lossy (VP8) bitstream."""
    if opened.format in _LOSSY_FORMATS:
        return True
    return opened.format == "WEBP" and _webp_has_lossy_chunk(opened.fp)


def _webp_has_lossy_chunk(stream: BinaryIO) -> bool:
    """Walk the RIFF chunks of a WebP (and the sub-chunks of its animation frames) for "VP8 ".

    Lossless bitstreams are "VP8L" chunks, lossy ones "VP8 "; Pillow does not say which it read.
    """
    position = stream.tell()
    try:
        stream.seek(0)
        data = stream.read()
    finally:
        stream.seek(position)

    def lossy(start: int, end: int) -> bool:
        while start + 8 <= end:
            kind = data[start : start + 4]
            (size,) = struct.unpack("<I", data[start + 4 : start + 8])
            if kind == b"VP8 ":
                return True
            if kind == b"ANMF" and lossy(start + 8 + 16, start + 8 + size):  # 16-byte header
                return True
            start += 8 + size + (size & 1)  # chunks are padded to even sizes
        return False

    return lossy(12, len(data))  # after "RIFF", size, "WEBP"


def _sixteen_bit_colour(opened: Image.Image) -> bool:
    """Whether the current frame holds 16-bit colour samples (Pillow decodes them to 8 bits)."""
    return opened.mode in ("RGB", "RGBA") and any(
        _rawmode(tile).endswith((";16B", ";16L", ";16N")) for tile in opened.tile
    )


def _rawmode(tile: object) -> str:
    args = tile.args
    return str(args[0] if isinstance(args, tuple) else args)


def _low_bytes(path: Path, index: int) -> Image.Image:
    """Frame ``index`` of a 16-bit colour file decoded again for the low byte of each sample.

    Pillow has no 16-bit colour mode: it decodes 16-bit RGB(A) by keeping each sample's high
    byte. Decoding the same data with the byte order swapped keeps the low byte instead, so
    high × 256 + low is the exact 16-bit sample, with Pillow's own decoders doing all the work.
    """
    swap = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
    reopened = Image.open(path)
    with reopened:
        reopened.seek(index)
        tiles = []
        for tile in reopened.tile:
            raw = _rawmode(tile)
            swapped = raw[:-1] + swap[raw[-1]]
            args = (swapped, *tile.args[1:]) if isinstance(tile.args, tuple) else swapped
            tiles.append(tile._replace(args=args))
        reopened.tile = tiles
        return ImageOps.exif_transpose(reopened)


def _frame_pixels(
    image: Image.Image, low: Image.Image | None, with_alpha: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixels (3, H, W) in [0, 1] and alpha (H, W) levels (or None) of one decoded frame."""
    if low is not None:  # 16-bit colour: alpha in 16-bit levels too
        mode = "RGBA" if with_alpha else "RGB"
        high_bytes = np.asarray(image.convert(mode), dtype=np.int32)
        low_bytes = np.asarray(low.convert(mode), dtype=np.int32)
        if image.mode == "RGB" and with_alpha:  # an opaque frame among transparent ones
            low_bytes[..., 3] = 255
        samples = torch.from_numpy(high_bytes * 256 + low_bytes).permute(2, 0, 1)
        alpha = samples[3].clone() if with_alpha else None
        return (samples[:3].double() / 65535).float(), alpha
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:
        array = np.asarray(image, dtype=np.float64) / 65535.0
        gray = torch.from_numpy(array.clip(0, 1)).float()
        return gray.expand(3, *gray.shape).clone(), None
    if image.mode == "F":
        raise ValueError("floating-point images (mode F) have no defined range")
    if image.mode == "CMYK":
        image = _cmyk_to_srgb(image, image.info.get("icc_profile"))
    array = np.asarray(image.convert("RGBA" if with_alpha else "RGB"))
    pixels = torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255
    alpha = torch.from_numpy(array[..., 3].copy()) if with_alpha else None
    return pixels, alpha


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


def write_image(
    path: str | os.PathLike,
    levels: torch.Tensor,
    source: LoadedImage,
    plan: OutputPlan | None = None,
) -> None:
    """Write protected levels with the source's alpha, frame timing and planned metadata.

    Written to a temporary file beside ``path`` and renamed into place, so a failed write leaves
    nothing behind. Refuses to write over the source file.

    Args:
        path: the output file.
        levels: (F, 3, H, W) or, for one frame, (3, H, W) whole levels of ``plan.bit_depth``:
            uint8 for 8 bits, int32 holding 0–65535 for 16 bits (see ``quantise_within_budget``).
            A gray plan writes channel 0.
        source: the input these levels protect (alpha, timing, frames).
        plan: format, bit depth and metadata; ``plan_output(source, "png")`` when None.

    Raises:
        ImageFileError: the write failed (disk full, permissions, a missing package, ...) or
            would hit the source.
    """
    path = Path(path)
    if path.exists() and path.resolve() == source.path.resolve():
        raise ImageFileError(f"{path}: refusing to overwrite the original image")
    plan = plan or plan_output(source, "png")
    levels = levels if levels.dim() == 4 else levels.unsqueeze(0)
    expected = torch.uint8 if plan.bit_depth == 8 else torch.int32
    if levels.dtype != expected:
        raise ValueError(f"{plan.bit_depth}-bit levels must be {expected}, got {levels.dtype}")
    alpha = _alpha_levels(source.alpha, plan.bit_depth)
    try:
        with atomic_output(path) as stream:
            if plan.bit_depth == 16 and not plan.gray:
                _write_colour_tiff16(stream, levels, alpha, plan.metadata, path)
            else:
                _write_with_pillow(stream, levels, alpha, source.animation, plan)
    except (OSError, ValueError) as error:  # ValueError: the encoder refuses (e.g. WebP > 16383)
        reason = getattr(error, "strerror", None) or error
        raise ImageFileError(f"{path}: could not be written ({reason})") from None


def _alpha_levels(alpha: torch.Tensor | None, bit_depth: int) -> torch.Tensor | None:
    """The source's alpha (F, H, W) in the output's levels (16-bit alpha rounded to 8 bits)."""
    if alpha is None or bit_depth == 16 or alpha.dtype == torch.uint8:
        return alpha
    return (alpha.double() / 257).round().to(torch.uint8)


def _write_with_pillow(
    stream: BinaryIO,
    levels: torch.Tensor,
    alpha: torch.Tensor | None,
    animation: Animation | None,
    plan: OutputPlan,
) -> None:
    """PNG/APNG, TIFF (pages), WebP (animated, lossless, exact) or JPEG through Pillow."""
    images = [_pillow_frame(frame, plan, alpha, index) for index, frame in enumerate(levels)]
    options = _save_options(plan)
    if len(images) > 1:
        options.update(save_all=True, append_images=images[1:])
        if animation is not None and plan.image_format in ("png", "webp"):
            options.update(_animation_options(animation, plan.image_format))
    images[0].save(stream, format=plan.image_format.upper(), **options)


def _pillow_frame(
    frame: torch.Tensor, plan: OutputPlan, alpha: torch.Tensor | None, index: int
) -> Image.Image:
    """One frame's levels (3, H, W) as a Pillow image: RGB(A) 8-bit or 16-bit gray (I;16)."""
    if plan.gray:
        return Image.fromarray(frame[0].numpy().astype(np.uint16))
    channels = [frame] if alpha is None else [frame, alpha[index].unsqueeze(0)]
    return Image.fromarray(torch.cat(channels).permute(1, 2, 0).contiguous().numpy())


def _save_options(plan: OutputPlan) -> dict[str, object]:
    """Pillow save options: lossless settings, JPEG quality and the planned metadata."""
    options: dict[str, object] = {
        "png": {},
        "tiff": {"compression": "tiff_deflate"},
        # exact: keep the colour of fully transparent pixels, which the budget also covers
        "webp": {"lossless": True, "exact": True},
        "jpeg": {"quality": plan.quality},
    }[plan.image_format]
    meta = plan.metadata
    if meta.exif:
        options["exif"] = meta.exif
    if meta.icc_profile:
        options["icc_profile"] = meta.icc_profile
    if meta.dpi:
        options["dpi"] = meta.dpi
    if plan.image_format == "png" and (meta.text or meta.xmp):
        chunks = PngImagePlugin.PngInfo()
        for key, value in meta.text.items():
            chunks.add_text(key, value)  # tEXt, or iTXt where the text is not Latin-1
        if meta.xmp:
            chunks.add_itxt(_PNG_XMP_KEY, meta.xmp.decode("utf-8", "replace"))
        options["pnginfo"] = chunks
    elif plan.image_format == "tiff" and meta.xmp:
        options["tiffinfo"] = {_TIFF_XMP_TAG: meta.xmp}
    elif meta.xmp:
        options["xmp"] = meta.xmp
    return options


def _animation_options(animation: Animation, image_format: str) -> dict[str, object]:
    """Durations, loop and (APNG) disposal; frames are whole pictures, so APNG blends none."""
    options: dict[str, object] = {
        "duration": list(animation.durations_ms),
        # a file that says nothing about looping (a GIF without loop extension) plays once
        "loop": 1 if animation.loop is None else animation.loop,
    }
    if image_format == "png":
        options["blend"] = 0  # OP_SOURCE: each frame replaces the canvas, as read
        if animation.disposal is not None:
            options["disposal"] = [_APNG_DISPOSAL[name] for name in animation.disposal]
    return options


def _write_colour_tiff16(
    stream: BinaryIO,
    levels: torch.Tensor,
    alpha: torch.Tensor | None,
    metadata: Metadata,
    path: Path,
) -> None:
    """16-bit colour TIFF pages through tifffile, the one writer of 16-bit RGB at hand.

    Pillow has no 16-bit colour mode; tifffile (a dependency, pure Python over numpy) is
    imported here, when needed, so that reading and writing 8-bit files never pays for it.
    """
    import tifffile

    samples = levels if alpha is None else torch.cat([levels, alpha.unsqueeze(1)], dim=1)
    pages = samples.permute(0, 2, 3, 1).numpy().astype(np.uint16)
    extratags = []
    if metadata.xmp:
        extratags.append((_TIFF_XMP_TAG, 1, len(metadata.xmp), metadata.xmp, True))  # BYTE
    buffer = io.BytesIO()  # tifffile wants a named file or an in-memory one
    with tifffile.TiffWriter(buffer) as tiff:
        for page in pages:
            tiff.write(
                page,
                photometric="rgb",
                compression="zlib",
                extrasamples=None if alpha is None else ("unassalpha",),
                iccprofile=metadata.icc_profile,
                resolution=metadata.dpi,
                resolutionunit="INCH" if metadata.dpi else None,
                extratags=extratags,
                metadata=None,  # no tifffile JSON in ImageDescription
            )
    stream.write(buffer.getvalue())


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
    """The RGB pixels (3, H, W) in [0, 1] of an 8-bit still we wrote, as a viewer decodes them."""
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
