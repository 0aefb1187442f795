"""What the subcommands share: model options and loading, list parsing, exit codes, errors."""

from __future__ import annotations

import argparse
import sys

from ..models import DEFAULT_MODEL, DTYPES, LatentDiffusion, ModelUnavailableError, model_notes
from ..runtime.memory import AUTO_MAX_BATCH, parse_memory

#: Exit codes: all done; some work failed (a file, a missing model); the command line was wrong.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A subcommand cannot go on; ``main`` prints the message once and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def comma_list(text: str, what: str) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]``.

    Raises:
        CommandError: the list is empty (``what`` names the option in the message).
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise CommandError(f"{what} needs at least one name, got '{text}'")
    return items


def number_list(text: str, what: str) -> list[float]:
    """``"0.1,0.3"`` → ``[0.1, 0.3]``.

    Raises:
        CommandError: an item is not a number.
    """
    try:
        return [float(item) for item in comma_list(text, what)]
    except ValueError:
        raise CommandError(f"{what} takes numbers separated by commas, got '{text}'") from None


def add_model_options(parser: argparse.ArgumentParser, *, auto_dtype: bool = False) -> None:
    """--model, --device, --dtype (with ``auto_dtype``, also ``--dtype auto``, the default)."""
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
    if auto_dtype:
        group.add_argument(
            "--dtype",
            default="auto",
            choices=["auto", *sorted(DTYPES)],
            help="networks' precision; the perturbation always stays fp32. auto: bf16 on a GPU "
            "or CPU that computes it natively (AVX512-BF16/AMX), else fp32 (then bf16 only if "
            "fp32 does not fit --max-memory) (default: auto)",
        )
        return
    group.add_argument(
        "--dtype", default="fp32", choices=sorted(DTYPES), help="weights' precision (default: fp32)"
    )


def load_model(args: argparse.Namespace, *, device=None, dtype: str | None = None):
    """The model of ``--model``/``--device``/``--dtype``, with its notes printed to stderr.

    Raises:
        CommandError: weights or device missing: the library's one sentence, exit code 1.
    """
    try:
        model = LatentDiffusion.from_pretrained(
            args.model, device=device or args.device, dtype=dtype or args.dtype
        )
    except ModelUnavailableError as error:
        hint = "--model takes a hub id, a local folder or 'mini'"
        raise CommandError(f"{str(error).rstrip('.')} ({hint}).", EXIT_FAILED) from None
    for note in model_notes(model):
        print(f"note: {note}", file=sys.stderr)
    return model


def print_error(message: str) -> None:
    """The one way a command reports an error."""
    print(f"mimicshield: error: {message}", file=sys.stderr)


def batch_size_bound(text: str) -> int:
    """--batch-size: a whole number ≥ 1 (an upper bound), or 'auto'."""
    if text == "auto":
        return AUTO_MAX_BATCH
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"--batch-size must be a whole number or 'auto', got '{text}'") from None
    return at_least_one(value, "--batch-size")


def memory_budget(text: str) -> int | None:
    """--max-memory: a size in bytes, or None for 'auto'."""
    if text == "auto":
        return None
    try:
        return parse_memory(text)
    except ValueError as error:
        raise CommandError(f"--max-memory: {error}") from None


def at_least_one(value: int, name: str) -> int:
    """``value`` if it is ≥ 1.

    Raises:
        CommandError: naming ``name`` and the value.
    """
    if value < 1:
        raise CommandError(f"{name} must be at least 1, got {value}")
    return value
