"""``mimicshield protect INPUT... --output DIR``: protect image files, write copies and a record."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .. import METHODS, Budget, BudgetError, LatentDiffusion, ModelUnavailableError
from ..acceleration import SpeedOptions, configure
from ..batch import (
    FileResult,
    InputError,
    ProtectionJob,
    collect_inputs,
    largest_image,
    plan_outputs,
    reuse_completed,
    run_job,
    settings_fingerprint,
    write_record,
)
from ..io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, ImageFileError, read_image, read_mask
from ..methods import TargetedMethod
from ..models import resolve_device, resolve_dtype
from ..planning import (
    AUTO_MAX_BATCH,
    MemoryPlan,
    MemoryPlanError,
    ModelSize,
    automatic_budget,
    default_dtypes,
    parse_memory,
    plan_memory,
)
from ..processes import Processes
from ..sharding import (
    completed_outputs,
    merge_part_files,
    part_record_path,
    read_records,
    shard,
)
from .options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_model_options, fail, model_notes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "protect",
        help="add a bounded protective perturbation to images",
        description="Protect images against diffusion mimicry. Budgets are L∞ distances in "
        "0–255 units of the 8-bit image: --eps 16 means no pixel channel moves by more than 16 "
        "levels (16/255 on the [0, 1] scale), checked on the saved file.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the copies")
    parser.add_argument(
        "--method", default="sds-", choices=list(METHODS), help="protection method (default: sds-)"
    )
    parser.add_argument(
        "--eps", type=float, default=16, help="L∞ budget in 0–255 units (default: 16, i.e. 16/255)"
    )
    parser.add_argument(
        "--step-size", type=float, default=1, help="PGD step in 0–255 units (default: 1)"
    )
    parser.add_argument("--steps", type=int, default=100, help="PGD steps (default: 100)")
    parser.add_argument(
        "--noise-samples",
        type=int,
        default=1,
        help="diffusion noise draws (t, ε) averaged per step in one batched UNet call after "
        "one encoder pass; on the miniature model 2 did not strengthen sds- (bench/README.md) "
        "(default: 1, the reference)",
    )
    parser.add_argument(
        "--prompt", default="a photo", help="text condition of the denoiser (default: 'a photo')"
    )
    parser.add_argument(
        "--target",
        default="pattern",
        help="textural target of photoguard/mist/sdst: 'pattern' (built in), 'gray', or an "
        "image file (default: pattern)",
    )
    parser.add_argument("--mask", type=Path, help="image: white = may be perturbed, black = keep")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--batch-size",
        default="1",
        help="images of one size per batch, or 'auto' for the largest that fits --max-memory "
        f"(up to {AUTO_MAX_BATCH}); lowered to fit (default: 1, so that each image's result does "
        "not depend on the others)",
    )
    parser.add_argument(
        "--format", default="png", choices=list(OUTPUT_FORMATS), help="lossless output format"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default: {DEFAULT_MAX_PIXELS})",
    )
    add_model_options(parser, auto_dtype=True)
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument(
        "--max-memory",
        default="auto",
        help="memory budget per process, e.g. 8GiB: batch size and precision (with --dtype auto) "
        "are chosen to fit; 'auto' uses 85%% of what the device has free (default: auto)",
    )
    speed.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC layout of weights and activations; measured 13–19 %% faster on a CPU at 512² "
        "(bench/README.md) (default: on for CPU, off elsewhere until measured there)",
    )
    speed.add_argument(
        "--compile", action="store_true", help="torch.compile encoder and UNet (slow first step)"
    )
    speed.add_argument(
        "--attention-slicing", action="store_true", help="diffusers' sliced UNet attention"
    )
    speed.add_argument(
        "--vae-tiling", action="store_true", help="encode large images tile by tile (alters seams)"
    )
    speed.add_argument(
        "--encoder-checkpointing",
        action="store_true",
        help="recompute encoder activations in the backward pass (more time; measured on CPU "
        "not to lower the peak, see bench/README.md)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # 1. Everything that can be checked without a model.
    try:
        inputs = collect_inputs(args.inputs)
        outputs = plan_outputs(inputs, args.output, args.format)
        job = ProtectionJob(
            method=_method(args),
            output_dir=args.output,
            seed=args.seed,
            batch_size=1,  # set from the memory plan below
            mask=None if args.mask is None else read_mask(args.mask),
            image_format=args.format,
            max_pixels=_positive(args.max_pixels, "--max-pixels"),
        )
        max_batch = _batch_size(args.batch_size)
        budget = None if args.max_memory == "auto" else parse_memory(args.max_memory)
    except (BudgetError, InputError, ImageFileError, ValueError) as error:
        return fail(str(error), EXIT_USAGE)

    # 2. This process's place in the run (one process unless started by `accelerate launch`).
    processes = Processes.start(args.device)

    # 3. The model, in the precision and configuration that fit the memory budget.
    try:
        device = processes.device or resolve_device(args.device)
        dtypes = default_dtypes(device, args.dtype)
        model = LatentDiffusion.from_pretrained(args.model, device=device, dtype=dtypes[0])
        plan = _plan(model, job, inputs, dtypes, max_batch, budget, processes)
    except ModelUnavailableError as error:
        return fail(str(error), EXIT_FAILED)
    except MemoryPlanError as error:
        return fail(str(error), EXIT_USAGE)
    if plan.dtype != dtypes[0]:
        model.to(device, resolve_dtype(plan.dtype))
    speed = SpeedOptions(
        channels_last=device.type == "cpu" if args.channels_last is None else args.channels_last,
        compile=args.compile,
        attention_slicing=args.attention_slicing,
        vae_tiling=args.vae_tiling,
        encoder_checkpointing=args.encoder_checkpointing,
    )
    configure(model, speed)
    job = dataclasses.replace(job, batch_size=plan.batch_size)
    if processes.is_main:
        _announce(model)

    # 4. Skip what an earlier run with the same settings already protected; split the rest.
    fingerprint = settings_fingerprint(job, model.name, model.dtype)
    reused, remaining = reuse_completed(
        inputs, outputs, completed_outputs(read_records(args.output), fingerprint)
    )
    mine = shard(remaining, processes.index, processes.count)

    # 5. The run, with a progress bar over this process's steps and a record after each file.
    record_path = processes.record_path(args.output)
    own_record = (
        record_path
        if processes.count == 1
        else part_record_path(record_path, processes.index, processes.count)
    )
    results: list[FileResult] = list(reused) if processes.count == 1 else []
    started = time.perf_counter()
    extra = {
        "command": sys.argv,
        "inputs": [str(path) for path in inputs],
        "memory_plan": plan.as_record(),
        "speed": speed.as_record(),
        "processes": processes.count,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_record(own_record, job, model, results, extra)
    steps = job.method.budget.steps
    bar = tqdm(
        total=len(mine) * steps,
        unit="step",
        desc=job.method.name if processes.count == 1 else f"{job.method.name} [{processes.index}]",
        disable=not processes.is_main,
    )

    def on_step(step: int, steps: int, value: float) -> None:
        bar.update(1)

    position = {str(path): rank for rank, path in enumerate(inputs)}

    def on_file(result: FileResult) -> None:
        results.append(result)
        results.sort(key=lambda item: position[item.input])  # the record lists inputs in order
        if not result.ok:
            if result.seconds is None:  # never reached protection: count its steps as done
                bar.update(steps)
            tqdm.write(f"error: {result.error}", file=sys.stderr)
        write_record(own_record, job, model, results, extra)

    run_job(mine, job, model, outputs=outputs, on_step=on_step, on_file=on_file)
    bar.close()

    # 6. Several processes: the main one merges their records into one, in input order.
    if processes.count > 1:
        processes.wait_for_everyone()
        if not processes.is_main:
            return EXIT_FAILED if any(not result.ok for result in results) else EXIT_OK
        merged = merge_part_files(
            record_path,
            processes.count,
            extra_images=[dataclasses.asdict(result) for result in reused],
            order=[str(path) for path in inputs],
        )
        results = [FileResult(**image) for image in merged["images"]]

    # 7. Summary.
    failed = [result for result in results if not result.ok]
    elapsed = time.perf_counter() - started
    print(
        f"protected {len(results) - len(failed)} of {len(results)} images with {job.method.name} "
        f"(ε = {job.method.budget.eps * 255:g}/255) in {elapsed:.1f} s"
        + (f", {len(reused)} reused from earlier runs" if reused else "")
        + f"; record: {record_path}"
    )
    for result in results:
        if result.ok:
            print(
                f"  {result.output}: L∞ {result.linf_255:g}/255, PSNR {result.psnr_db} dB, "
                f"SSIM {result.ssim}" + (" (reused)" if result.reused else "")
            )
    return EXIT_FAILED if failed else EXIT_OK


def _plan(
    model: LatentDiffusion,
    job: ProtectionJob,
    inputs: list[Path],
    dtypes: tuple[str, ...],
    max_batch: int,
    budget: int | None,
    processes: Processes,
) -> MemoryPlan:
    """Fit the largest input into the budget (the automatic one counts the loaded weights)."""
    size = ModelSize.of(model)
    if budget is None:
        weights = size.parameters * model.dtype.itemsize
        sharers = processes.local_count if model.device.type == "cpu" else 1
        budget = automatic_budget(model.device, resident_bytes=weights, sharers=sharers)
    height, width = largest_image(inputs) or (64, 64)
    return plan_memory(
        size,
        height=height,
        width=width,
        unet_backward_draws=job.method.noise_samples if job.method.weights().denoising else 0,
        budget_bytes=budget,
        dtypes=dtypes,
        max_batch_size=max_batch,
        method_name=job.method.name,
    )


def _method(args: argparse.Namespace):
    """The configured method; the target image is read here so a bad file fails early."""
    method_class = METHODS[args.method]
    settings = {
        "budget": Budget.from_255(args.eps, args.step_size, args.steps),
        "prompt": args.prompt,
        "noise_samples": args.noise_samples,
    }
    if issubclass(method_class, TargetedMethod):
        target = args.target
        if target not in ("pattern", "gray"):
            target = read_image(target).pixels
        settings["target"] = target
    return method_class(**settings)


def _batch_size(text: str) -> int:
    """--batch-size: a whole number ≥ 1 (an upper bound), or 'auto'."""
    if text == "auto":
        return AUTO_MAX_BATCH
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--batch-size must be a whole number or 'auto', got '{text}'") from None
    return _positive(value, "--batch-size")


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _announce(model: LatentDiffusion) -> None:
    for note in model_notes(model):
        print(f"note: {note}", file=sys.stderr)
