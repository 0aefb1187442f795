"""What the subcommands share: model options and loading, list parsing, exit codes, errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..models import (
    DEFAULT_MODEL,
    DTYPES,
    Ensemble,
    LatentDiffusion,
    ModelUnavailableError,
    model_notes,
)
from ..models import load_model as load_named_model
from ..models.ensemble import normalised_weights
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


#: What --model accepts, shared by every subcommand's help.
_MODEL_HELP = (
    "a Stable Diffusion 1.x/2.x, SDXL, SD3/3.5 or FLUX.1 model: hub id, local diffusers folder or "
    "single-file .safetensors checkpoint (the family is read from the model itself); 'mini' "
    "for the bundled miniature (not Stable Diffusion), 'mini-flow' for the miniature of the "
    "flow-matching family, or a random-weight architecture for trying the mechanics (tiny, "
    "tiny-sdxl, tiny-sd3, tiny-flux, sd15-random, sdxl-random, sd35-medium-random, "
    "flux-dev-random)"
)


def add_model_options(
    parser: argparse.ArgumentParser, *, auto_dtype: bool = False, ensemble: bool = False
) -> None:
    """--model, --model-config, --device, --dtype, and with ``ensemble`` --model-weights.

    With ``auto_dtype``, also ``--dtype auto``, the default. With ``ensemble``, --model takes
    several comma-separated models (see ``load_model``).
    """
    group = parser.add_argument_group("model")
    several = (
        "; several, comma-separated (A,B[,C]), protect against all of them at once (an ensemble: "
        "their objectives averaged with --model-weights, for protection that transfers across "
        "families)"
        if ensemble
        else ""
    )
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"{_MODEL_HELP}{several} (default: {DEFAULT_MODEL})".replace("%", "%%"),
    )
    if ensemble:
        group.add_argument(
            "--model-weights",
            help="weights of the --model ensemble's objectives, comma-separated, one per model, "
            "each > 0 (e.g. 2,1; normalised to sum 1) (default: equal)",
        )
    group.add_argument(
        "--model-config",
        help="for a single-file checkpoint in --model: a hub id or local diffusers folder with "
        "the configuration of its architecture (model_index.json, each part's config and "
        "tokenizer; no weights needed) (default: diffusers' reference repository of the detected "
        "architecture, which must then be in the local Hugging Face cache when offline)",
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


def model_names(text: str) -> list[str]:
    """--model as a list of names: an existing path is one name even if it holds a comma.

    Raises:
        CommandError: nothing named.
    """
    if Path(text).exists():
        return [text]
    return comma_list(text, "--model")


def load_model(
    args: argparse.Namespace,
    *,
    device=None,
    dtype: str | None = None,
    ensemble: bool = False,
) -> LatentDiffusion | Ensemble:
    """The model of ``--model``/``--device``/``--dtype``, with its notes printed to stderr.

    ``--model-config`` (when the command has it) is passed on for single-file checkpoints. With
    ``ensemble``, several comma-separated names load each model and return an ``Ensemble``
    weighted by ``--model-weights``; one name returns the model itself.

    Raises:
        CommandError: several models where one is needed, or bad weights (exit code 2); weights
            or device missing: the library's one sentence (exit code 1).
    """
    names = model_names(args.model)
    weights_text = getattr(args, "model_weights", None)
    weights = None if weights_text is None else number_list(weights_text, "--model-weights")
    if len(names) > 1 and not ensemble:
        raise CommandError(
            f"--model names one model for this command, got {len(names)} ({', '.join(names)}); "
            "only `mimicshield protect` protects against several models at once"
        )
    if weights is not None:
        try:  # before loading anything: full-size models take minutes
            normalised_weights(weights, names)
        except ValueError as error:
            raise CommandError(f"--model-weights: {error}") from None
    config = getattr(args, "model_config", None)
    models = [_load_one(name, device or args.device, dtype or args.dtype, config) for name in names]
    if len(models) == 1:
        return models[0]
    try:
        return Ensemble.of(models, weights)
    except ValueError as error:
        raise CommandError(f"--model: {error}") from None


def _load_one(name: str, device, dtype: str, config: str | None) -> LatentDiffusion:
    """One model, its notes printed; a missing one is a CommandError with exit code 1."""
    try:
        model = load_named_model(name, device=device, dtype=dtype, config=config)
    except ModelUnavailableError as error:
        hint = "--model takes a hub id, a local folder, a .safetensors file or 'mini'"
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
