"""``mimicshield bench``: time, memory and FLOPs of each method, side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..models import DTYPES, versions
from ..runtime.benchmark import (
    PGD_METHODS,
    REFERENCE_METHOD,
    BenchConfig,
    format_table,
    run_benchmark,
)
from ..runtime.speed import SpeedOptions
from .options import EXIT_OK, CommandError, comma_list


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand and its options to the ``mimicshield`` parser."""
    parser = subparsers.add_parser(
        "bench",
        help="measure time per step, peak memory and FLOPs of protection methods",
        description="Run each method for a few PGD steps on random images and report the median "
        "time per step (after warm-up), peak memory (CUDA max allocated, or peak RSS on CPU), "
        "FLOPs per step and achieved FLOP/s, with ratios to sds- measured in the same run. "
        "Comma-separated lists measure every combination.",
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="tiny, tiny-sdxl, tiny-sd3, tiny-flux, mini, mini-flow, sd15-random, sdxl-random, "
        "sd35-medium-random, flux-dev-random (a real architecture with random weights: same "
        "cost, no download), or any SD 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 diffusers folder, hub id "
        "or single file (default: tiny)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(PGD_METHODS),
        help=f"comma-separated PGD methods (default: all: {','.join(PGD_METHODS)})",
    )
    parser.add_argument(
        "--resolution", default="512", help="image side(s) in pixels (default: 512)"
    )
    parser.add_argument("--batch-size", default="1", help="batch size(s) (default: 1)")
    parser.add_argument(
        "--dtype", default="fp32", help=f"network precision(s): {', '.join(DTYPES)} (default: fp32)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--steps-timed", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument(
        "--warmup-steps", type=int, default=1, help="untimed warm-up steps (default: 1)"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder and denoiser")
    parser.add_argument(
        "--encoder-checkpointing",
        action="store_true",
        help="recompute encoder activations in the backward pass (less memory, more time)",
    )
    parser.add_argument("--output", type=Path, help="write the rows as JSON to this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Benchmark every combination of the options, print a table, optionally write JSON.

    Returns:
        ``EXIT_OK``.

    Raises:
        CommandError: an option value is malformed or out of range.
    """
    try:
        config = BenchConfig(
            model=args.model,
            methods=tuple(comma_list(args.methods, "--methods")),
            resolutions=_integers(args.resolution, "--resolution"),
            batch_sizes=_integers(args.batch_size, "--batch-size"),
            dtypes=_dtypes(args.dtype),
            device=args.device,
            steps_timed=args.steps_timed,
            warmup_steps=args.warmup_steps,
            speed=SpeedOptions(
                channels_last=args.channels_last,
                compile=args.compile,
                encoder_checkpointing=args.encoder_checkpointing,
            ),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None

    def on_row(row: dict[str, object]) -> None:
        print(
            f"{row['method']:<11} {row['resolution']}² batch {row['batch_size']} {row['dtype']}: "
            f"{row['step_seconds']:.4g} s/step, peak {row['peak_memory_bytes'] / 2**30:.3f} GiB",
            file=sys.stderr,
        )

    rows = run_benchmark(config, on_row=on_row)
    print(format_table(rows, REFERENCE_METHOD))
    if args.output is not None:
        report = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "versions": versions(),
            "units": "seconds, bytes, FLOPs (one multiply-add = 2 FLOPs), FLOP/s",
            "rows": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        print(f"rows written to {args.output}")
    return EXIT_OK


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in comma_list(text, option))
    except ValueError:
        raise CommandError(
            f"{option} takes whole numbers separated by commas, got '{text}'"
        ) from None


def _dtypes(text: str) -> tuple[str, ...]:
    names = tuple(comma_list(text, "--dtype"))
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise CommandError(f"--dtype must be among {', '.join(DTYPES)}, got {', '.join(unknown)}")
    return names
