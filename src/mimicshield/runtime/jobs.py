"""Protecting files: read, batch frames by size, protect, quantise within budget, write, verify.

Every frame of a file is protected: animated GIF/WebP/APNG frames and multi-page TIFF pages go
through the same batches as still images (they share the file's size), and the file is written
once all its frames are done, with its timing, then read back frame by frame to check the budget.

One bad file never stops the others: each input ends as a ``FileResult`` that says what happened.
Originals are never written to; outputs appear atomically (see ``imagefiles.write_image``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..budget import linf_255, quantise_within_budget
from ..filesystem import file_sha256
from ..imagefiles import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    LoadedImage,
    OutputPlan,
    check_output_settings,
    plan_output,
    read_image,
    write_image,
)
from ..metrics import latent_shift, psnr, ssim
from ..models import LatentDiffusion
from ..models.ensemble import Ensemble, Surrogate
from ..protect import Protection, protect
from ..purify import jpeg
from .files import plan_outputs
from .large_images import LargeImages, WorkingResolution

logger = logging.getLogger(__name__)

#: Slack on the on-disk budget check, for float round-off only (far below one 8-bit level).
_LINF_SLACK_255 = 1e-4
#: What a JPEG output's budget is checked on, said in its record.
JPEG_BUDGET_NOTE = (
    "the budget is checked on the lossless protected pixels before JPEG encoding; the codec's "
    "own change is measured and reported here, not refused"
)


@dataclass
class FileResult:
    """What happened to one input. Distances in 0–255 units, PSNR in dB.

    ``linf_255`` is the worst frame's L∞ distance to the original, measured on the saved file
    (for JPEG output: on the lossless protected pixels, see ``jpeg``); ``psnr_db`` and ``ssim``
    are the worst frame's, saved file against original.
    """

    input: str
    output: str | None = None
    ok: bool = False
    error: str | None = None
    linf_255: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    seconds: float | None = None
    input_sha256: str | None = None  # the input's bytes, to recognise it when resuming
    reused: bool = False  # protected by an earlier run with the same settings, not redone
    input_format: str | None = None  # Pillow's name, e.g. "GIF"; "(lossy)" for lossy WebP
    output_format: str | None = None  # one of imagefiles.OUTPUT_FORMATS
    frames: int | None = None  # frames or pages, all protected and written
    animation: dict | None = None  # durations_ms, loop, disposal as written
    bit_depth: int | None = None  # of the output: 8 or 16
    metadata: dict | None = None  # kinds kept, stripped (on request), dropped (format lacks)
    jpeg: dict | None = None  # codec figures of a JPEG output (see ``codec_figures``)
    protection: dict | None = None  # whole, or the large-image way with its working size/tiles


@dataclass
class ProtectionJob:
    """Settings of one run over files.

    Attributes:
        method: configured method (budget, prompt, target), or a ``Staged`` run of several.
        output_dir: where protected copies go; must not be a folder an input lives in.
        seed: each batch starts its own generator from this seed, so an image's result does not
            depend on which other files were in the run (with batch size 1).
        batch_size: frames of the same size protected together.
        mask: (1, 1, H, W) in [0, 1] applied to images of that size, or None.
        image_format: one of ``OUTPUT_FORMATS``, or None: each input's own lossless format
            (``imagefiles.default_output_format``).
        quality: JPEG quality 1–100, used when the format is "jpeg".
        strip_metadata: write no EXIF, XMP, text or DPI (the ICC profile is kept for colour).
        max_pixels: larger inputs are refused with a clear message.
        max_whole_pixels: images with more pixels are protected the ``large_images`` way, one
            at a time (None: every image whole); set from the memory plan.
        large_images: how images too large to protect whole are protected.
    """

    method: Protection
    output_dir: Path
    seed: int = 0
    batch_size: int = 1
    mask: torch.Tensor | None = None
    image_format: str | None = None
    quality: int = DEFAULT_JPEG_QUALITY
    strip_metadata: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_whole_pixels: int | None = None
    large_images: LargeImages = WorkingResolution()

    def is_large(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (H, W) goes the large-image way."""
        return self.max_whole_pixels is not None and size[0] * size[1] > self.max_whole_pixels

    def __post_init__(self) -> None:
        # Checked here, not at the first file: a bad setting must not fail a run half done.
        check_output_settings(self.image_format, self.quality)


@dataclass
class _File:
    """A file in progress: its frames fill in as their batches are protected."""

    image: LoadedImage
    plan: OutputPlan
    result: FileResult
    protected: list[torch.Tensor | None] = field(default_factory=list)
    seconds: float = 0.0
    failed: bool = False  # a batch with one of its frames could not be protected

    @property
    def complete(self) -> bool:
        return all(frame is not None for frame in self.protected)


@dataclass(frozen=True)
class _Frame:
    file: _File
    index: int

    @property
    def pixels(self) -> torch.Tensor:
        return self.file.image.frames[self.index]


def run_job(
    inputs: list[Path],
    job: ProtectionJob,
    model: Surrogate,
    *,
    outputs: dict[Path, Path] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Protect every input file; returns one result per input, in input order.

    Args:
        inputs: image files (see ``collect_inputs``).
        job: the settings.
        model: the loaded model, or an ensemble of models.
        outputs: each input's output path; planned from ``inputs`` when None. A process that
            protects one shard of a run passes the plan of the whole run, so that names agree.
        on_step: called after each PGD step of each batch (progress bars).
        on_file: called as each file finishes, in the order they finish (incremental records).
    """
    if outputs is None:
        outputs = plan_outputs(inputs, job.output_dir, job.image_format)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    results = {path: FileResult(input=str(path)) for path in inputs}

    def finish(result: FileResult) -> None:
        if on_file is not None:
            on_file(result)

    for batch in _batches(inputs, job, results, finish):
        batch = [frame for frame in batch if not frame.file.failed]
        if not batch:
            continue
        started = time.perf_counter()
        images = torch.stack([frame.pixels for frame in batch])
        try:
            protected = protect_frames(images, job, model, on_step)
        except (RuntimeError, ValueError) as error:  # out of memory, a size the networks refuse
            _fail_files(batch, error, finish)
            continue
        seconds = (time.perf_counter() - started) / len(batch)
        for frame, pixels in zip(batch, protected, strict=True):
            file = frame.file
            file.protected[frame.index] = pixels
            file.seconds += seconds
            if file.complete:
                file.result.seconds = round(file.seconds, 3)
                _save_and_verify(file, outputs[file.image.path], job, model)
                finish(file.result)
    return [results[path] for path in inputs]


def _fail_files(
    batch: list[_Frame], error: Exception, finish: Callable[[FileResult], None]
) -> None:
    """Every file with a frame in ``batch`` fails by name; the run goes on with the others."""
    logger.debug("protecting a batch failed", exc_info=error)
    for frame in batch:
        file = frame.file
        if not file.failed:  # each file once, in order
            file.failed = True
            file.result.error = f"{file.image.path}: could not be protected ({error})"
            finish(file.result)


def protect_frames(
    images: torch.Tensor,
    job: ProtectionJob,
    model: Surrogate,
    on_step: Callable[[int, int, float], None] | None = None,
) -> torch.Tensor:
    """The one place where pixels become protected pixels: (B, 3, H, W) → (B, 3, H, W) in [0, 1].

    ``images`` are frames of one size (stills, animation frames or pages); each batch starts a
    generator from the job's seed. Images larger than the memory plan allows go the job's
    large-image way (working resolution or tiles); the others are protected whole.
    """
    generator = torch.Generator().manual_seed(job.seed)
    if job.is_large(tuple(images.shape[-2:])):
        return job.large_images.protect(
            images, job.method, model, mask=job.mask, generator=generator, callback=on_step
        )
    return protect(images, job.method, model, mask=job.mask, generator=generator, callback=on_step)


def _batches(
    inputs: list[Path],
    job: ProtectionJob,
    results: dict[Path, FileResult],
    finish: Callable[[FileResult], None],
) -> Iterator[list[_Frame]]:
    """Read inputs lazily and yield same-size batches of frames; unreadable files finish here.

    A file's frames share its size, so they fill batches like still images do: with the default
    batch size of 1 they are protected one by one, which keeps memory at one frame's need
    whatever the frame count (the memory plan is made per batch, not per file).
    """
    pending: dict[tuple[int, int], list[_Frame]] = {}
    for path in inputs:
        result = results[path]
        result.input_sha256 = file_sha256(path)
        try:
            loaded = read_image(path, max_pixels=job.max_pixels)
            _check_mask_fits(job.mask, loaded)
            plan = plan_output(
                loaded, job.image_format, strip_metadata=job.strip_metadata, quality=job.quality
            )
        except ImageFileError as error:
            result.error = str(error)
            finish(result)
            continue
        file = _File(loaded, plan, result, protected=[None] * loaded.frame_count)
        # Large images go one at a time: the memory plan for their way is made at batch 1.
        batch_size = 1 if job.is_large(loaded.size) else job.batch_size
        for index in range(loaded.frame_count):
            group = pending.setdefault(loaded.size, [])
            group.append(_Frame(file, index))
            if len(group) == batch_size:
                yield pending.pop(loaded.size)
    yield from pending.values()


def _check_mask_fits(mask: torch.Tensor | None, loaded: LoadedImage) -> None:
    if mask is not None and tuple(mask.shape[-2:]) != loaded.size:
        mask_h, mask_w = mask.shape[-2:]
        image_h, image_w = loaded.size
        raise ImageFileError(
            f"{loaded.path}: the mask is {mask_w}×{mask_h} but the image is {image_w}×{image_h}"
        )


def _save_and_verify(file: _File, output: Path, job: ProtectionJob, model: Surrogate) -> None:
    """Quantise within budget, write, read every frame back and measure it against the original.

    A file that fails after it was written (over the budget, unreadable, a measurement the
    device cannot hold) is removed: only files that passed every check stay on disk.
    """
    result = file.result
    try:
        _write_and_measure(file, output, job, model)
    except ImageFileError as error:
        result.error = str(error)
    except (RuntimeError, ValueError) as error:  # e.g. out of memory while measuring
        logger.debug("checking %s failed", output, exc_info=error)
        result.error = f"{output}: could not be checked ({error})"
    if result.error is not None:
        if result.output is not None:
            Path(result.output).unlink(missing_ok=True)
            result.output = None
        return
    result.ok = True


def _write_and_measure(file: _File, output: Path, job: ProtectionJob, model: Surrogate) -> None:
    """Write ``file``'s protected frames and fill its result's measurements (or its error)."""
    image, plan, result = file.image, file.plan, file.result
    eps = job.method.budget.eps
    original = image.frames
    protected = to_file_colours(torch.stack(file.protected), plan)
    levels = quantise_within_budget(protected, original, eps, levels=plan.levels)
    _describe(result, image, plan)
    large = job.is_large(image.size)
    result.protection = job.large_images.describe(model, *image.size) if large else {"way": "whole"}
    write_image(output, levels, image, plan)
    result.output = str(output)
    saved = read_image(output, max_pixels=job.max_pixels).frames
    if saved.shape != original.shape:
        result.error = (
            f"{output}: the saved file has {saved.shape[0]} frames of {tuple(saved.shape[-2:])}, "
            f"the original {original.shape[0]} of {tuple(original.shape[-2:])}"
        )
        return
    # JPEG changes the pixels after protection: its budget is the lossless protected pixels'.
    checked = levels.double() / plan.levels if plan.image_format == "jpeg" else saved
    result.linf_255 = linf_255(checked, original)  # the worst frame's
    result.psnr_db = _finite_or_none(float(psnr(saved, original).min()))
    if min(image.size) >= 11:
        result.ssim = round(float(ssim(saved, original).min()), 6)
    if plan.image_format == "jpeg":
        # An image too large to protect whole is too large for a native-size encoder pass too;
        # an ensemble has no one latent space to measure the shift in.
        encoder = None if large or isinstance(model, Ensemble) else model
        result.jpeg = codec_figures(encoder, original, checked.float(), saved, plan.quality)
    if result.linf_255 > eps * 255 + _LINF_SLACK_255:
        result.error = (
            f"{output}: saved file is {result.linf_255:.3f}/255 from the original, over the budget "
            f"of {eps * 255:g}/255 (the original is finer than the output's levels)"
        )


def to_file_colours(protected: torch.Tensor, plan: OutputPlan) -> torch.Tensor:
    """Protected frames (F, 3, H, W) in the colours the file can hold.

    A 16-bit gray file stays gray: the perturbation is averaged over the three channels (the
    mean of values inside the ε-ball around a gray original stays inside it).
    """
    if not plan.gray:
        return protected
    return protected.mean(dim=1, keepdim=True).expand_as(protected)


def codec_figures(
    model: LatentDiffusion | None,
    original: torch.Tensor,
    lossless: torch.Tensor,
    saved: torch.Tensor,
    quality: int,
) -> dict[str, object]:
    """How much a JPEG output changed the pixels, and how much protection survived it.

    Args:
        model: its encoder measures the latent shift ‖E(x') − E(x)‖∞ (scaled latent units);
            None leaves the latent shifts out (an image too large for a native-size pass, or a
            run against an ensemble).
        original: (1, 3, H, W) in [0, 1], the input.
        lossless: the protected pixels before JPEG, same shape and range.
        saved: the JPEG file as decoded, same shape and range.
        quality: the JPEG quality the file was written with.

    Returns:
        L∞ distances to the original in 0–255 units (of the saved file, and of the original
        compressed the same way: the codec's own share), and the latent shifts of the lossless
        protected pixels, of the JPEG file, and of the compressed original (None without model).
    """
    compressed_original = jpeg(original, quality)
    before = after = codec = None
    if model is not None:
        shifts = latent_shift(
            model, original.repeat(3, 1, 1, 1), torch.cat([lossless, saved, compressed_original])
        ).latent_linf
        before, after, codec = (round(float(value), 6) for value in shifts)
    return {
        "quality": quality,
        "budget_checked_on": JPEG_BUDGET_NOTE,
        "linf_255_saved": linf_255(saved, original),
        "linf_255_codec_on_original": linf_255(compressed_original, original),
        "latent_shift_lossless": before,
        "latent_shift_after_jpeg": after,
        "latent_shift_codec_on_original": codec,
    }


def _describe(result: FileResult, image: LoadedImage, plan: OutputPlan) -> None:
    """The record's account of the file: formats, frames, timing, bit depth, metadata."""
    lossy_webp = image.source_format == "WEBP" and image.lossy
    result.input_format = image.source_format + (" (lossy)" if lossy_webp else "")
    result.output_format = plan.image_format
    result.frames = image.frame_count
    result.bit_depth = plan.bit_depth
    result.metadata = plan.metadata_report
    if image.animation is not None and plan.image_format in ("png", "webp"):
        result.animation = asdict(image.animation)


def _finite_or_none(value: float) -> float | None:
    return round(value, 4) if value != float("inf") else None
