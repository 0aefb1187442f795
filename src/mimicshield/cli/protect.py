"""``mimicshield protect INPUT... --output DIR``: protect image files, write copies and a record."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from .. import METHODS, Budget, BudgetError, LatentDiffusion, ModelUnavailableError
from ..batch import (
    FileResult,
    InputError,
    ProtectionJob,
    collect_inputs,
    plan_outputs,
    run_job,
    write_record,
)
from ..io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, ImageFileError, read_image, read_mask
from ..methods import TargetedMethod
from .options import add_model_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    parser.add_argument("--batch-size", type=int, default=1, help="images per batch (default: 1)")
    parser.add_argument(
        "--format", default="png", choices=list(OUTPUT_FORMATS), help="lossless output format"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default: {DEFAULT_MAX_PIXELS})",
    )
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # 1. Everything that can be checked without a model.
    try:
        inputs = collect_inputs(args.inputs)
        plan_outputs(inputs, args.output, args.format)
        job = ProtectionJob(
            method=_method(args),
            output_dir=args.output,
            seed=args.seed,
            batch_size=_positive(args.batch_size, "--batch-size"),
            mask=None if args.mask is None else read_mask(args.mask),
            image_format=args.format,
            max_pixels=_positive(args.max_pixels, "--max-pixels"),
        )
    except (BudgetError, InputError, ImageFileError, ValueError) as error:
        return _fail(str(error), EXIT_USAGE)

    # 2. The model.
    try:
        model = LatentDiffusion.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except ModelUnavailableError as error:
        return _fail(str(error), EXIT_FAILED)
    _announce(model)

    # 3. The run, with a progress bar over all PGD steps and a record rewritten after each file.
    record_path = args.output / f"protect-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    results: list[FileResult] = []
    started = time.perf_counter()
    extra = {"command": sys.argv, "inputs": [str(path) for path in inputs]}
    bar = tqdm(total=len(inputs) * job.method.budget.steps, unit="step", desc=job.method.name)

    def on_step(step: int, steps: int, value: float) -> None:
        bar.update(1)

    def on_file(result: FileResult) -> None:
        results.append(result)
        if not result.ok:
            if result.seconds is None:  # never reached protection: count its steps as done
                bar.update(job.method.budget.steps)
            tqdm.write(f"error: {result.error}", file=sys.stderr)
        write_record(record_path, job, model, results, extra)

    run_job(inputs, job, model, on_step=on_step, on_file=on_file)
    bar.close()

    # 4. Summary.
    failed = [result for result in results if not result.ok]
    elapsed = time.perf_counter() - started
    print(
        f"protected {len(results) - len(failed)} of {len(results)} images with {job.method.name} "
        f"(ε = {job.method.budget.eps * 255:g}/255) in {elapsed:.1f} s; record: {record_path}"
    )
    for result in results:
        if result.ok:
            print(
                f"  {result.output}: L∞ {result.linf_255:g}/255, PSNR {result.psnr_db} dB, "
                f"SSIM {result.ssim}"
            )
    return EXIT_FAILED if failed else EXIT_OK


def _method(args: argparse.Namespace):
    """The configured method; the target image is read here so a bad file fails early."""
    method_class = METHODS[args.method]
    settings = {
        "budget": Budget.from_255(args.eps, args.step_size, args.steps),
        "prompt": args.prompt,
    }
    if issubclass(method_class, TargetedMethod):
        target = args.target
        if target not in ("pattern", "gray"):
            target = read_image(target).pixels
        settings["target"] = target
    return method_class(**settings)


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _announce(model: LatentDiffusion) -> None:
    if model.random_weights:
        print(
            f"note: model '{model.name}' has RANDOM weights: this run exercises the code path "
            "and protects against nothing real.",
            file=sys.stderr,
        )
    elif model.name == "mini":
        print(
            "note: model 'mini' is a miniature trained on a few hundred images for "
            "demonstration; it is not Stable Diffusion and protection against it says nothing "
            "about real models.",
            file=sys.stderr,
        )


def _fail(message: str, code: int) -> int:
    print(f"mimicshield: error: {message}", file=sys.stderr)
    return code
