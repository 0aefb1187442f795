"""Entry point: ``mimicshield SUBCOMMAND ...``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .. import BudgetError, ModelUnavailableError, __version__
from ..imagefiles import ImageFileError
from ..runtime import InputError, MemoryPlanError
from .options import EXIT_FAILED, EXIT_USAGE, CommandError, print_error

#: Subcommand modules, each with ``register(subparsers)``; imported when the parser is built, after
#: the libraries have been quieted (some of them warn at import time).
SUBCOMMANDS = ("protect", "mimic", "evaluate", "demo", "bench", "serve", "env")


def build_parser() -> argparse.ArgumentParser:
    """The ``mimicshield`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mimicshield",
        description="Protect images against diffusion-based mimicry (SDEdit, inpainting, "
        "textual inversion) with small, bounded perturbations.",
    )
    parser.add_argument("--version", action="version", version=f"mimicshield {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the subcommand, and return its exit code (0 ok, 1 some work failed, 2 usage).

    Errors that end a command are reported here, once: ``CommandError`` with its code, a missing
    model or device (1), and inputs, budgets or memory limits that cannot be used (2). Files that
    fail inside a run are reported by the command and never end it.
    """
    arguments = sys.argv[1:] if argv is None else argv
    verbose = "-v" in arguments or "--verbose" in arguments
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        _quiet_libraries()
    args = build_parser().parse_args(arguments)
    try:
        return args.run(args)
    except CommandError as error:
        print_error(str(error))
        return error.code
    except ModelUnavailableError as error:  # weights or device missing: the one sentence
        print_error(str(error))
        return EXIT_FAILED
    except (BudgetError, InputError, ImageFileError, MemoryPlanError) as error:
        print_error(str(error))
        return EXIT_USAGE


def _quiet_libraries() -> None:
    """Hide the libraries' advice about optional packages and their loading bars in the shell.

    The hub client's deprecation notices (about arguments the model libraries pass it) say
    nothing a user of this command can act on.
    """
    import diffusers
    import transformers

    warnings.filterwarnings("ignore", category=UserWarning, module=r"huggingface_hub\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"huggingface_hub\.")

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
