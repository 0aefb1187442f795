"""Options shared by subcommands that load a model."""

from __future__ import annotations

import argparse

from ..models import DEFAULT_MODEL, DTYPES


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hub id or local diffusers folder of a Stable Diffusion 1.x/2.x model; 'mini' for "
        "the bundled miniature (not Stable Diffusion), 'tiny' for random weights "
        f"(default: {DEFAULT_MODEL})",
    )
    group.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    group.add_argument(
        "--dtype", default="fp32", choices=sorted(DTYPES), help="weights' precision (default: fp32)"
    )
