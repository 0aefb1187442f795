"""``protect_files``: protect a list of image files the way every front end does.

The steps, in order (``protect_files`` reads as them):

1. plan the outputs: one path per input, never an input's folder;
2. fit the run into memory: the largest batch and the precision the budget allows;
3. skip what an earlier run with the same settings already protected (resume);
4. take this process's share when ``accelerate launch`` started several;
5. protect, quantise within budget, write, read back and verify, file by file, rewriting the
   JSON record after each file so that a crash loses at most the file in progress;
6. with several processes, the main one merges their records into one, in input order.

The command line, the web page and the benchmark call this one function, so records, resume and
failure handling are the same everywhere.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..filesystem import file_sha256
from ..imagefiles import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    declared_size,
)
from ..models import dtype_name, resolve_dtype
from ..models.ensemble import Surrogate
from ..protect import Protection
from .files import InputError, plan_outputs
from .jobs import FileResult, ProtectionJob, run_job
from .large_images import LargeImages, WorkingResolution
from .memory import MemoryPlan, MemoryPlanError, automatic_budget, plan_memory, size_of
from .processes import Processes, shard
from .records import (
    completed_outputs,
    merge_part_files,
    part_record_path,
    read_records,
    reuse_completed,
    settings_fingerprint,
    write_record,
)
from .speed import SpeedOptions, configure

#: Planned for when no input can be opened (each then fails by name when read).
_FALLBACK_SIZE = (64, 64)


@dataclass
class RunSummary:
    """What a ``protect_files`` run did.

    Attributes:
        results: one per input of the whole run in input order (on the main process; other
            processes of a sharded run hold only their own share).
        record_path: the run's JSON record.
        plan: the memory plan the run used (batch size, precision, estimate).
        seconds: wall time of the protection loop of this process.
        process_count: processes that shared the run.
    """

    results: list[FileResult]
    record_path: Path
    plan: MemoryPlan
    seconds: float
    process_count: int = 1

    @property
    def failed(self) -> list[FileResult]:
        """The results of files that were not protected (each names its file and why)."""
        return [result for result in self.results if not result.ok]

    @property
    def reused(self) -> list[FileResult]:
        """The results an earlier run with the same settings had already produced."""
        return [result for result in self.results if result.reused]


@dataclass(frozen=True)
class RunOptions:
    """How a run over files is carried out (what is computed is the method's business).

    Attributes:
        seed: each batch starts a generator from this seed (see ``ProtectionJob``).
        mask: (1, 1, H, W) in [0, 1] where the perturbation may go, or None.
        image_format: output format, one of ``imagefiles.OUTPUT_FORMATS``; None (default):
            each input keeps its lossless format, others become PNG
            (``imagefiles.default_output_format``).
        quality: JPEG quality 1–100 when ``image_format`` is "jpeg"; the budget is then
            checked on the protected pixels before encoding and the codec's change is recorded.
        strip_metadata: write no EXIF, XMP, PNG text or DPI; the ICC profile is kept, since
            the pixels are in its colour space.
        max_pixels: larger inputs are refused by name.
        large_images: how inputs too large for memory are protected (``WorkingResolution()``:
            at the model's native resolution, the perturbation enlarged; or ``Tiles()``).
        max_batch_size: upper bound on images of one size protected together; the memory plan
            may choose fewer.
        memory_budget_bytes: memory the run may use per process; None: 85 % of what the
            device has free, the loaded weights counted.
        dtypes: precisions the memory plan may choose, in order of preference; None: only the
            model's own. When it picks another, the model is converted in place.
        speed: layout and compilation switches applied to the model before the run (in place);
            None leaves the model as it is.
        resume: skip inputs that an earlier run into the same folder protected with the same
            settings (same input bytes, output file still there).
        speed_preset: the record of the speed preset the method was built from
            (``presets.SpeedPreset.as_record``: its name, every parameter it set and what the
            user set instead), written into the run's record; None: no preset was named.
        record_extra: more fields for the record (e.g. the command line that started the run).
    """

    seed: int = 0
    mask: torch.Tensor | None = None
    image_format: str | None = None
    quality: int = DEFAULT_JPEG_QUALITY
    strip_metadata: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    large_images: LargeImages = WorkingResolution()
    max_batch_size: int = 1
    memory_budget_bytes: int | None = None
    dtypes: tuple[str, ...] | None = None
    speed: SpeedOptions | None = None
    resume: bool = True
    speed_preset: dict[str, object] | None = None
    record_extra: dict[str, object] = field(default_factory=dict)


def protect_files(
    inputs: Sequence[Path],
    output: Path,
    method: Protection,
    model: Surrogate,
    options: RunOptions = RunOptions(),
    *,
    processes: Processes | None = None,
    on_start: Callable[[int], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> RunSummary:
    """Protect image files into ``output`` and write the run's JSON record there.

    Args:
        inputs: image files, in the order the record lists them (``files.collect_inputs``).
        output: folder for the protected copies and the record ``protect-<UTC time>.json``.
        method: the configured protection method, or a ``Staged`` run of several.
        model: the loaded model, or an ``Ensemble`` of several (converted or configured in
            place only as ``options`` say).
        options: seed, mask, format, memory and resume settings.
        processes: this process's place in an ``accelerate launch`` run; None: a lone process.
        on_start: called once with the number of files this process will protect (progress).
        on_step: called after every PGD step of every batch: (step, steps, objective value).
        on_file: called as each file finishes (protected, failed or reused-before-start).

    Returns:
        A ``RunSummary``. Files that fail (unreadable, too large, over budget on disk) are in
        ``summary.failed`` with a sentence naming the file; they never stop the others.

    Raises:
        files.InputError: the input list, the output folder or the tile settings cannot be
            used, or the method refuses the model (``ProtectionMethod.check_model``).
        ModelUnavailableError: the method's own network (an amortised protector) is missing.
        memory.MemoryPlanError: not even the smallest image fits the memory budget (larger
            images that do not fit are refused one by one, in ``summary.failed``).
    """
    inputs = list(inputs)
    processes = processes or Processes()
    job = ProtectionJob(
        method=method,
        output_dir=output,
        seed=options.seed,
        mask=options.mask,
        image_format=options.image_format,
        quality=options.quality,
        strip_metadata=options.strip_metadata,
        max_pixels=options.max_pixels,
    )

    # 1. Outputs, planned over the whole run so that every process agrees on names.
    outputs = plan_outputs(inputs, output, options.image_format)

    # 2. Batch size and precision that fit the largest image that can fit; larger ones are
    #    refused by name. The model follows the chosen precision.
    try:
        options.large_images.check(model)
        method.check_model(model)  # before any work: e.g. a protector trained for another model
    except ValueError as error:
        raise InputError(str(error)) from None
    sizes = _declared_sizes(inputs, options.max_pixels)
    fit = fit_memory(model, job, sizes, options, processes)
    plan, refused = fit.plan, fit.refused
    if resolve_dtype(plan.dtype) != model.dtype:
        model.to(model.device, resolve_dtype(plan.dtype))
    if options.speed is not None:
        configure(model, options.speed)
    job = dataclasses.replace(
        job,
        batch_size=plan.batch_size,
        max_whole_pixels=fit.max_whole_pixels,
        large_images=options.large_images,
    )

    # 3. Resume: what an earlier run with the same fingerprint finished stays as it is. This
    #    run's own records are left out: processes that start late must see what the others saw.
    output.mkdir(parents=True, exist_ok=True)
    record_path = processes.record_path(output)
    fingerprint = settings_fingerprint(job, model.name, model.dtype)
    earlier = read_records(output, excluding_run=record_path) if options.resume else []
    ways = {
        path: job.large_images.name if job.is_large(hw) else "whole" for path, hw in sizes.items()
    }
    reused, remaining = reuse_completed(
        inputs, outputs, completed_outputs(earlier, fingerprint), ways
    )
    # Every process must split the same list: none writes an output before all have looked.
    if processes.count > 1:
        processes.wait_for_everyone()

    # 4. This process's share.
    mine = shard(remaining, processes.index, processes.count)
    if on_start is not None:
        on_start(len(mine))

    # 5. Protect, recording after each file.
    own_record = (
        record_path
        if processes.count == 1
        else part_record_path(record_path, processes.index, processes.count)
    )
    extra = {
        **options.record_extra,
        "inputs": [str(path) for path in inputs],
        "memory_plan": plan.as_record(),
        "speed": None if options.speed is None else options.speed.as_record(),
        "speed_preset": options.speed_preset,
        "processes": processes.count,
        "resume": options.resume,
    }
    results: list[FileResult] = list(reused) if processes.count == 1 else []
    position = {str(path): rank for rank, path in enumerate(inputs)}
    write_record(own_record, job, model, results, extra)

    def finish(result: FileResult) -> None:
        results.append(result)
        results.sort(key=lambda item: position[item.input])  # the record lists inputs in order
        write_record(own_record, job, model, results, extra)
        if on_file is not None:
            on_file(result)

    started = time.perf_counter()
    for path in mine:
        if path in refused:
            finish(FileResult(input=str(path), input_sha256=file_sha256(path), error=refused[path]))
    to_protect = [path for path in mine if path not in refused]
    run_job(to_protect, job, model, outputs=outputs, on_step=on_step, on_file=finish)
    seconds = time.perf_counter() - started

    # 6. Several processes: the main one merges the parts, reused images included.
    if processes.count > 1:
        processes.wait_for_everyone()
        if processes.is_main:
            merged = merge_part_files(
                record_path,
                processes.count,
                extra_images=[dataclasses.asdict(result) for result in reused],
                order=[str(path) for path in inputs],
            )
            results = [FileResult(**image) for image in merged["images"]]
    return RunSummary(results, record_path, plan, seconds, processes.count)


@dataclass(frozen=True)
class MemoryFit:
    """How a run fits its memory budget.

    Attributes:
        plan: batch size and precision.
        max_whole_pixels: the most pixels an image may have to be protected whole; larger ones
            go the run's large-image way (None: every input fits whole).
        refused: {input: the sentence that refuses it}, for inputs that fit no way.
    """

    plan: MemoryPlan
    max_whole_pixels: int | None
    refused: dict[Path, str]


def fit_memory(
    model: Surrogate,
    job: ProtectionJob,
    sizes: dict[Path, tuple[int, int]],
    options: RunOptions,
    processes: Processes,
) -> MemoryFit:
    """Which inputs fit whole, the plan for them, and how the larger ones are protected.

    ``sizes`` are (H, W) from the file headers (``_declared_sizes``: nothing is decoded); files
    whose header cannot be read are not in it and fail by name when they are read. The automatic
    budget counts the loaded weights.
    The plan fits the largest input that fits whole; each larger input goes the large-image way
    (``options.large_images``) if what the networks then see fits, and is refused otherwise.

    Raises:
        memory.MemoryPlanError: no input fits any way, even at batch 1 in the leanest precision:
            the budget itself is too small; the message says what would fit.
    """
    size = size_of(model)
    budget = options.memory_budget_bytes
    if budget is None:
        weights = size.parameters * model.dtype.itemsize
        sharers = processes.local_count if model.device.type == "cpu" else 1
        budget = automatic_budget(model.device, resident_bytes=weights, sharers=sharers)
    sizes = dict(sizes) or {None: _FALLBACK_SIZE}

    def plan(height: int, width: int, dtypes: tuple[str, ...], batch: int) -> MemoryPlan:
        return plan_memory(
            size,
            height=height,
            width=width,
            unet_backward_draws=job.method.unet_backward_draws,
            budget_bytes=budget,
            dtypes=dtypes,
            max_batch_size=batch,
            method_name=job.method.name,
        )

    # 1. The largest size that fits whole sets the plan; larger sizes are large images.
    dtypes = options.dtypes or (dtype_name(model.dtype),)
    chosen, max_whole_pixels, large = None, 0, []
    for height, width in sorted(set(sizes.values()), key=lambda hw: hw[0] * hw[1], reverse=True):
        try:
            chosen = plan(height, width, dtypes, options.max_batch_size)
        except MemoryPlanError:
            large.append((height, width))
            continue
        max_whole_pixels = height * width
        break

    # 2. A large image goes its way (one at a time) when what the networks see then fits.
    refused: dict[Path, str] = {}
    last_error = None
    for height, width in large:
        seen = options.large_images.size(model, height, width)
        try:
            fitted = plan(*seen, (chosen.dtype,) if chosen else dtypes, 1)
        except MemoryPlanError as error:
            last_error = error
            for path, declared in sizes.items():
                if declared == (height, width):
                    refused[path] = f"{path}: too large for the memory budget: {error}"
            continue
        chosen = chosen or fitted
    if chosen is None:  # nothing fits any way: the budget, not the images, is the problem
        raise last_error
    return MemoryFit(chosen, max_whole_pixels if large else None, refused)


def _declared_sizes(inputs: Sequence[Path], max_pixels: int) -> dict[Path, tuple[int, int]]:
    """{input: (H, W)} for every input whose header can be read within ``max_pixels``."""
    sizes = {}
    for path in inputs:
        try:
            sizes[path] = declared_size(path, max_pixels=max_pixels)
        except ImageFileError:
            continue  # reported by name when the file is read
    return sizes
