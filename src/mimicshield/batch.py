"""Protecting files: read, batch by size, protect, quantise within budget, write, verify, record.

One bad file never stops the others: each input ends as a ``FileResult`` that says what happened.
Originals are never written to; outputs appear atomically (see ``io.write_image``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

from .budget import linf_255, quantise_within_budget
from .environment import versions
from .io import (
    DEFAULT_MAX_PIXELS,
    OUTPUT_FORMATS,
    ImageFileError,
    LoadedImage,
    read_back,
    read_image,
    write_image,
)
from .methods import ProtectionMethod
from .metrics import psnr, ssim
from .models import LatentDiffusion, resolve_dtype
from .protect import protect
from .sharding import file_sha256, is_done

logger = logging.getLogger(__name__)

#: Files a folder contributes; files named explicitly are always tried.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
#: Slack on the on-disk budget check, for float round-off only (far below one 8-bit level).
_LINF_SLACK_255 = 1e-4


class InputError(ValueError):
    """The set of inputs or the output folder cannot be used; the message says why."""


@dataclass
class FileResult:
    """What happened to one input. Distances in 0–255 units, PSNR in dB."""

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


@dataclass
class ProtectionJob:
    """Settings of one run over files.

    Attributes:
        method: configured method (budget, prompt, target).
        output_dir: where protected copies go; must not be a folder an input lives in.
        seed: each batch starts its own generator from this seed, so an image's result does not
            depend on which other files were in the run (with batch size 1).
        batch_size: images of the same size protected together.
        mask: (1, 1, H, W) in [0, 1] applied to images of that size, or None.
        image_format: one of ``OUTPUT_FORMATS``.
        max_pixels: larger inputs are refused with a clear message.
    """

    method: ProtectionMethod
    output_dir: Path
    seed: int = 0
    batch_size: int = 1
    mask: torch.Tensor | None = None
    image_format: str = "png"
    max_pixels: int = DEFAULT_MAX_PIXELS


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders into their image files (sorted, not recursive); keep named files as given.

    Raises:
        InputError: nothing to do (no paths, or folders without images).
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("%s: folder holds no image files", path)
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise InputError("no input images: the given folders hold no image files")
    return files


def largest_image(paths: Iterable[Path]) -> tuple[int, int] | None:
    """(H, W) of the input with the most pixels, from the file headers only (fast).

    For memory planning: only the pixel count matters, so EXIF rotation is ignored. Files that
    cannot be opened are skipped here (they fail with a clear message when read). None if no
    file could be opened.
    """
    largest: tuple[int, int] | None = None
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError):
            continue
        if largest is None or height * width > largest[0] * largest[1]:
            largest = (height, width)
    return largest


def plan_outputs(inputs: list[Path], output_dir: Path, image_format: str) -> dict[Path, Path]:
    """Map each input to its output path: same stem, the format's suffix, never colliding.

    Raises:
        InputError: the output folder is a folder that holds inputs (originals could be hit).
    """
    if image_format not in OUTPUT_FORMATS:
        choices = ", ".join(OUTPUT_FORMATS)
        raise InputError(f"output format must be one of {choices}, got '{image_format}'")
    resolved_output = output_dir.resolve()
    for path in inputs:
        if path.resolve().parent == resolved_output:
            raise InputError(
                f"the output folder {output_dir} holds the input {path}; choose another folder "
                "so that originals are never overwritten"
            )
    suffix = OUTPUT_FORMATS[image_format]
    planned: dict[Path, Path] = {}
    taken: set[str] = set()
    for path in inputs:
        name = path.stem + suffix
        if name in taken:  # a.jpg and a.png, or the same name in two folders
            name = path.name + suffix
            counter = 2
            while name in taken:
                name, counter = f"{path.stem}-{counter}{suffix}", counter + 1
        taken.add(name)
        planned[path] = output_dir / name
    return planned


def settings_fingerprint(job: ProtectionJob, model_name: str, dtype: str | torch.dtype) -> str:
    """SHA-256 of the settings that decide what a protected file looks like.

    Included: the method's full record (budget, prompt, start, weights; a target image by its
    content), the model's name and precision, the seed, the mask's content and the output format.
    Left out on purpose: batch size, device, process count and speed switches (how the work is
    spread and computed, not what is asked for), and package versions (an upgrade should not
    redo finished work). A re-run skips an image only under the same fingerprint.
    """
    method = job.method.as_record()
    target = getattr(job.method, "target", None)
    if isinstance(target, torch.Tensor):
        method["target"] = _tensor_sha256(target)
    settings = {
        "method": method,
        "model": str(model_name),
        "dtype": str(resolve_dtype(dtype)).removeprefix("torch."),
        "seed": job.seed,
        "mask": None if job.mask is None else _tensor_sha256(job.mask),
        "output_format": job.image_format,
    }
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    values = tensor.detach().cpu().contiguous().float().numpy()
    return "sha256:" + hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()


def reuse_completed(
    inputs: list[Path], outputs: dict[Path, Path], completed: dict[str, dict]
) -> tuple[list[FileResult], list[Path]]:
    """Split inputs into those an earlier run already protected and those still to do.

    Args:
        inputs: image files.
        outputs: each input's output path (``plan_outputs`` over the whole run).
        completed: ``sharding.completed_outputs`` of the output folder's records.

    Returns:
        (results copied from the earlier records with ``reused`` set, inputs still to protect).
    """
    reused: list[FileResult] = []
    remaining: list[Path] = []
    known = {item.name for item in fields(FileResult)}
    for path in inputs:
        output = outputs[path]
        entry = completed.get(str(output.resolve()))
        digest = file_sha256(path) if entry is not None else None
        if digest is not None and is_done(entry, output, digest):
            earlier = {key: value for key, value in entry.items() if key in known}
            reused.append(FileResult(**{**earlier, "input": str(path), "reused": True}))
        else:
            remaining.append(path)
    return reused, remaining


def run_job(
    inputs: list[Path],
    job: ProtectionJob,
    model: LatentDiffusion,
    *,
    outputs: dict[Path, Path] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Protect every input file; returns one result per input, in input order.

    Args:
        inputs: image files (see ``collect_inputs``).
        job: the settings.
        model: the loaded model.
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
        started = time.perf_counter()
        images = torch.stack([item.pixels for item in batch])
        generator = torch.Generator().manual_seed(job.seed)
        protected = protect(
            images, job.method, model, mask=job.mask, generator=generator, callback=on_step
        )
        seconds = (time.perf_counter() - started) / len(batch)
        for item, pixels in zip(batch, protected, strict=True):
            result = results[item.path]
            result.seconds = round(seconds, 3)
            _save_and_verify(item, pixels, outputs[item.path], job, result)
            finish(result)
    return [results[path] for path in inputs]


def _batches(
    inputs: list[Path],
    job: ProtectionJob,
    results: dict[Path, FileResult],
    finish: Callable[[FileResult], None],
) -> Iterator[list[LoadedImage]]:
    """Read inputs lazily and yield same-size batches; unreadable files finish as errors here."""
    pending: dict[tuple[int, int], list[LoadedImage]] = {}
    for path in inputs:
        results[path].input_sha256 = file_sha256(path)
        try:
            loaded = read_image(path, max_pixels=job.max_pixels)
            _check_mask_fits(job.mask, loaded)
        except ImageFileError as error:
            results[path].error = str(error)
            finish(results[path])
            continue
        group = pending.setdefault(loaded.size, [])
        group.append(loaded)
        if len(group) == job.batch_size:
            yield pending.pop(loaded.size)
    yield from pending.values()


def _check_mask_fits(mask: torch.Tensor | None, loaded: LoadedImage) -> None:
    if mask is not None and tuple(mask.shape[-2:]) != loaded.size:
        mask_h, mask_w = mask.shape[-2:]
        image_h, image_w = loaded.size
        raise ImageFileError(
            f"{loaded.path}: the mask is {mask_w}×{mask_h} but the image is {image_w}×{image_h}"
        )


def _save_and_verify(
    item: LoadedImage, pixels: torch.Tensor, output: Path, job: ProtectionJob, result: FileResult
) -> None:
    """Quantise within budget, write, read the file back and measure it against the original."""
    eps = job.method.budget.eps
    levels = quantise_within_budget(pixels, item.pixels, eps)
    try:
        write_image(output, levels, item, image_format=job.image_format)
    except ImageFileError as error:
        result.error = str(error)
        return
    saved = read_back(output)
    result.output = str(output)
    result.linf_255 = linf_255(saved, item.pixels)
    result.psnr_db = _finite_or_none(float(psnr(saved[None], item.pixels[None])[0]))
    if min(item.size) >= 11:
        result.ssim = round(float(ssim(saved[None], item.pixels[None])[0]), 6)
    if result.linf_255 > eps * 255 + _LINF_SLACK_255:
        result.error = (
            f"{output}: saved file is {result.linf_255:.3f}/255 from the original, over the budget "
            f"of {eps * 255:g}/255 (the original is finer than 8 bits)"
        )
        return
    result.ok = True


def _finite_or_none(value: float) -> float | None:
    return round(value, 4) if value != float("inf") else None


def write_record(
    path: Path,
    job: ProtectionJob,
    model: LatentDiffusion,
    results: list[FileResult],
    extra: dict[str, object],
) -> None:
    """Write the run's JSON provenance record (method, parameters, seed, versions, per image).

    The record carries ``settings_fingerprint`` (see ``settings_fingerprint``) for resuming.
    """
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "units": "linf_255 and eps_255 are in 1/255 of the [0, 1] range; psnr_db in dB",
        "method": job.method.as_record(),
        "seed": job.seed,
        "batch_size": job.batch_size,
        "output_format": job.image_format,
        "mask": None if job.mask is None else f"{tuple(job.mask.shape[-2:])}",
        "model": model.describe(),
        "settings_fingerprint": settings_fingerprint(job, model.name, model.dtype),
        "versions": versions(),
        **extra,
        "images": [asdict(result) for result in results],
    }
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(record, indent=2, default=str))
    os.replace(temporary, path)
