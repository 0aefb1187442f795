"""Entry point: ``mimicshield SUBCOMMAND ...``."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from . import bench, demo, env, evaluate, mimic, protect

SUBCOMMANDS = (protect, mimic, evaluate, demo, bench, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimicshield",
        description="Protect images against diffusion-based mimicry (SDEdit, inpainting, "
        "textual inversion) with small, bounded perturbations.",
    )
    parser.add_argument("--version", action="version", version=f"mimicshield {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the subcommand, and return its exit code (0 ok, 1 some work failed, 2 usage)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    return args.run(args)


def _quiet_libraries() -> None:
    """Hide the libraries' advice about optional packages and their loading bars in the shell."""
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
