"""Protecting files: read, batch by size, protect, quantise within budget, write, verify, record.

One bad file never stops the others: each input ends as a ``FileResult`` that says what happened.
Originals are never written to; outputs appear atomically (see ``imagefiles.write_image``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..budget import linf_255, quantise_within_budget
from ..filesystem import file_sha256
from ..imagefiles import (
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    LoadedImage,
    read_back,
    read_image,
    write_image,
)
from ..methods import ProtectionMethod
from ..metrics import psnr, ssim
from ..models import LatentDiffusion
from ..protect import protect
from .files import plan_outputs

#: Slack on the on-disk budget check, for float round-off only (far below one 8-bit level).
_LINF_SLACK_255 = 1e-4


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
