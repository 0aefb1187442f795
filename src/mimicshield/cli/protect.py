"""``mimicshield protect INPUT... --output DIR``: parse, call ``protect_files``, print."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from .. import METHODS
from ..imagefiles import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    OUTPUT_FORMATS,
    check_output_settings,
    read_image,
    read_mask,
)
from ..methods import TargetedMethod
from ..models import DEFAULT_PROTECTOR, default_dtypes, resolve_device
from ..presets import DEFAULT_SPEED, SPEED_PRESETS
from ..protect import Protection
from ..runtime import (
    FileResult,
    Processes,
    RunOptions,
    RunSummary,
    SpeedOptions,
    collect_inputs,
    plan_outputs,
    protect_files,
)
from ..runtime.large_images import LARGE_IMAGE_WAYS, LargeImages, Tiles, WorkingResolution
from ..runtime.memory import AUTO_MAX_BATCH
from ..updates import STEP_SCHEDULES, UPDATE_RULES
from .options import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    add_model_options,
    at_least_one,
    batch_size_bound,
    load_model,
    memory_budget,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``protect`` subcommand and its options to the ``mimicshield`` parser."""
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
        "--speed",
        choices=list(SPEED_PRESETS),
        help="a named schedule chosen from the measured strength-versus-cost frontier (README, "
        "'Faster protection'): "
        + "; ".join(
            f"{name}: {p.describe()} ({p.summary})".replace("%", "%%")  # argparse formats help
            for name, p in SPEED_PRESETS.items()
        )
        + f". The record names the preset and every parameter it set. Flags given explicitly "
        f"(--method, --steps, --step-size, --update, --step-decay) replace a one-stage preset's "
        f"values; --eps, --prompt, --target and --noise-samples apply to every stage (default: "
        f"{DEFAULT_SPEED}'s schedule, which is also what the flags' defaults give)",
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        help="protection method (default: sds-, or the --speed preset's)",
    )
    parser.add_argument(
        "--eps", type=float, default=16, help="L∞ budget in 0–255 units (default: 16, i.e. 16/255)"
    )
    parser.add_argument(
        "--step-size",
        type=float,
        help="PGD step in 0–255 units; the first step's under a decaying --step-decay "
        "(default: 1, or the --speed preset's)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="PGD steps (default: 100, or the --speed preset's); amortised: one forward pass "
        "whatever the count (0 leaves the images unchanged)",
    )
    parser.add_argument(
        "--update",
        choices=list(UPDATE_RULES),
        help="how a step turns the gradient into a move: sign (the reference), momentum "
        "(MI-FGSM, decay 1) or adam (projected Adam, betas 0.9/0.999) (default: sign, or the "
        "--speed preset's)",
    )
    parser.add_argument(
        "--step-decay",
        choices=list(STEP_SCHEDULES),
        help="step size over the run: constant (the reference), or linear/cosine from --step-size "
        "down to a tenth of it at the last step (default: constant, or the --speed preset's)",
    )
    parser.add_argument(
        "--protector",
        default=DEFAULT_PROTECTOR,
        help="the trained network of --method amortised: a folder written by `python -m "
        "training.protector`, a hub id, or the bundled '%(default)s' (trained against --model "
        "mini only)",
    )
    parser.add_argument(
        "--noise-samples",
        type=int,
        default=1,
        help="diffusion noise draws (t, ε) averaged per step in one batched denoiser call after "
        "one encoder pass (default: 1, the reference)",
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
        "--format",
        default="auto",
        choices=["auto", *OUTPUT_FORMATS],
        help="output format. auto (default): PNG, TIFF and lossless WebP inputs keep their "
        "format (16-bit colour PNG becomes 16-bit TIFF); JPEG, lossy WebP, BMP and GIF become "
        "PNG (animated: APNG, since GIF's palette cannot hold the budget). jpeg: lossy; the "
        "budget is checked before encoding and the codec's own change is recorded",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_JPEG_QUALITY,
        help=f"JPEG quality 1-100 with --format jpeg (default: {DEFAULT_JPEG_QUALITY})",
    )
    parser.add_argument(
        "--strip-metadata",
        action="store_true",
        help="write no EXIF, XMP, PNG text or DPI; the ICC colour profile is kept, because "
        "the pixels are in its colour space and would show other colours without it",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip images an earlier run into the same folder protected with the same settings "
        "(default: on)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default: {DEFAULT_MAX_PIXELS})",
    )
    add_model_options(parser, auto_dtype=True, ensemble=True)
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument(
        "--large-images",
        default=WorkingResolution.name,
        choices=list(LARGE_IMAGE_WAYS),
        help="how images too large for the memory budget are protected: at the working "
        "resolution, the perturbation enlarged to native size, or tile by tile at native "
        "resolution (default: %(default)s)",
    )
    speed.add_argument(
        "--working-size",
        type=int,
        help="short side in pixels of the working resolution (default: the model's native "
        "resolution: 512 for Stable Diffusion 1.x, 1024 for SDXL, SD3 and FLUX; an ensemble's "
        "largest)",
    )
    speed.add_argument(
        "--tile",
        type=int,
        help="tile side in pixels for --large-images tiles, a multiple of 8 (of 16 for SD3 and "
        "FLUX) (default: the model's native resolution)",
    )
    speed.add_argument(
        "--tile-overlap", type=int, help="pixels shared by neighbouring tiles (default: tile/4)"
    )
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
        help="NHWC layout of weights and activations (default: on for CPU, off elsewhere)",
    )
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile encoder and denoiser (slow first step)",
    )
    speed.add_argument(
        "--attention-slicing",
        action="store_true",
        help="diffusers' sliced UNet attention (no effect on SD3 and FLUX transformers)",
    )
    speed.add_argument(
        "--vae-tiling", action="store_true", help="encode large images tile by tile (alters seams)"
    )
    speed.add_argument(
        "--encoder-checkpointing",
        action="store_true",
        help="recompute encoder activations in the backward pass (more time, less memory)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Protect the inputs with ``protect_files`` and print what happened; the exit code."""
    # 1. Everything that can be checked without a model.
    inputs = collect_inputs(args.inputs)
    image_format = None if args.format == "auto" else args.format
    plan_outputs(inputs, args.output, image_format)  # refuses an output folder that holds inputs
    try:
        check_output_settings(image_format, args.quality)
    except ValueError as error:
        raise CommandError(f"--quality: {error}") from None
    method, preset_record = _method(args)
    options = RunOptions(
        seed=args.seed,
        mask=None if args.mask is None else read_mask(args.mask),
        image_format=image_format,
        quality=args.quality,
        strip_metadata=args.strip_metadata,
        max_pixels=at_least_one(args.max_pixels, "--max-pixels"),
        max_batch_size=batch_size_bound(args.batch_size),
        memory_budget_bytes=memory_budget(args.max_memory),
        resume=args.resume,
        large_images=_large_images(args),
        speed_preset=preset_record,
        record_extra={"command": sys.argv},
    )

    # 2. This process's place in the run, then the model on the device it was given.
    processes = Processes.start(args.device)
    device = processes.device or resolve_device(args.device)
    dtypes = default_dtypes(device, args.dtype)
    model = load_model(args, device=device, dtype=dtypes[0], ensemble=True)
    speed = SpeedOptions(
        channels_last=device.type == "cpu" if args.channels_last is None else args.channels_last,
        compile=args.compile,
        attention_slicing=args.attention_slicing,
        vae_tiling=args.vae_tiling,
        encoder_checkpointing=args.encoder_checkpointing,
    )
    options = dataclasses.replace(options, dtypes=dtypes, speed=speed)

    # 3. The run, with a progress bar over this process's PGD steps.
    steps = method.budget.steps
    bar = tqdm(
        unit="step",
        desc=method.name if processes.count == 1 else f"{method.name} [{processes.index}]",
        disable=not processes.is_main,
    )

    def on_start(files: int) -> None:
        bar.reset(total=files * steps)

    def on_step(step: int, steps: int, value: float) -> None:
        if step == 1 and steps != method.budget.steps:  # a tiled file: all its tiles' steps
            bar.total += steps - method.budget.steps
        bar.update(1)

    def on_file(result: FileResult) -> None:
        if not result.ok:
            if result.seconds is None:  # never reached protection: count its steps as done
                bar.update(steps)
            tqdm.write(f"error: {result.error}", file=sys.stderr)

    summary = protect_files(
        inputs,
        args.output,
        method,
        model,
        options,
        processes=processes,
        on_start=on_start,
        on_step=on_step,
        on_file=on_file,
    )
    bar.close()
    if processes.is_main:
        _print_summary(summary, method)
    return EXIT_FAILED if summary.failed else EXIT_OK


def _print_summary(summary: RunSummary, method: Protection) -> None:
    results, reused = summary.results, summary.reused
    print(
        f"protected {len(results) - len(summary.failed)} of {len(results)} images with "
        f"{method.name} (ε = {method.budget.eps * 255:g}/255) in {summary.seconds:.1f} s"
        + (f", {len(reused)} reused from earlier runs" if reused else "")
        + f"; record: {summary.record_path}"
    )
    for result in results:
        if result.ok:
            print(
                f"  {result.output}: L∞ {result.linf_255:g}/255, "
                f"PSNR {_number(result.psnr_db)} dB, SSIM {_number(result.ssim)}"
                + (" (reused)" if result.reused else "")
            )


def _method(args: argparse.Namespace) -> tuple[Protection, dict[str, object] | None]:
    """The configured protection and the preset's record (None without --speed).

    Without --speed the flags' defaults are the reference schedule, so the preset builds
    exactly what the flags say. The target image is read here so a bad file fails early.
    """
    preset = SPEED_PRESETS[args.speed or DEFAULT_SPEED]
    overrides = {
        "method": args.method,
        "steps": args.steps,
        "step_size_255": args.step_size,
        "update": None if args.update is None else UPDATE_RULES[args.update](),
        "step_schedule": None if args.step_decay is None else STEP_SCHEDULES[args.step_decay](),
    }
    names = [args.method] if args.method else [stage.method for stage in preset.stages]
    target = args.target
    if target not in ("pattern", "gray") and any(
        issubclass(METHODS[name], TargetedMethod) for name in names
    ):
        target = read_image(target).pixels
    try:
        protection = preset.build(
            eps_255=args.eps,
            prompt=args.prompt,
            target=target,
            noise_samples=args.noise_samples,
            protector=args.protector,
            **overrides,
        )
    except ValueError as error:  # a setting out of range, or a preset it cannot change
        prefix = f"--speed {args.speed}: " if args.speed else ""
        raise CommandError(prefix + str(error)) from None
    return protection, None if args.speed is None else preset.as_record(overrides)


def _large_images(args: argparse.Namespace) -> LargeImages:
    """--large-images with its --working-size, or its --tile and --tile-overlap."""
    try:
        if args.large_images == WorkingResolution.name:
            return WorkingResolution(short_side=args.working_size)
        return Tiles(tile=args.tile, overlap=args.tile_overlap)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _number(value: float | None) -> str:
    """A measurement, or "–" where it is undefined (identical images, too small for SSIM)."""
    return "–" if value is None else f"{value:g}"
