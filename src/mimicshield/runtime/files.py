"""The files of a run: which inputs a list of paths names, and where each one's copy goes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..imagefiles import (
    DEFAULT_JPEG_QUALITY,
    OUTPUT_FORMATS,
    check_output_settings,
    default_output_format,
)

logger = logging.getLogger(__name__)

#: Files a folder contributes; files named explicitly are always tried.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


class InputError(ValueError):
    """The set of inputs or the output folder cannot be used; the message says why."""


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders into their image files (sorted, not recursive); keep named files as given.

    Raises:
        InputError: nothing to do (no paths, or folders without images).
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("%s: folder holds no image files", path)
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise InputError("no input images: the given folders hold no image files")
    return files


def plan_outputs(
    inputs: list[Path], output_dir: Path, image_format: str | None = None
) -> dict[Path, Path]:
    """Map each input to its output path: same stem, the format's suffix, never colliding.

    ``image_format`` None gives each input the suffix of its default output format
    (``imagefiles.default_output_format``, read from the file's header).

    Raises:
        InputError: the output folder is a folder that holds inputs (originals could be hit).
    """
    try:
        check_output_settings(image_format, DEFAULT_JPEG_QUALITY)
    except ValueError as error:
        raise InputError(str(error)) from None
    resolved_output = output_dir.resolve()
    for path in inputs:
        if path.resolve().parent == resolved_output:
            raise InputError(
                f"the output folder {output_dir} holds the input {path}; choose another folder "
                "so that originals are never overwritten"
            )
    planned: dict[Path, Path] = {}
    taken: set[str] = set()
    for path in inputs:
        suffix = OUTPUT_FORMATS[image_format or default_output_format(path)]
        name = path.stem + suffix
        if name in taken:  # a.jpg and a.png, or the same name in two folders
            name = path.name + suffix
            counter = 2
            while name in taken:
                name, counter = f"{path.stem}-{counter}{suffix}", counter + 1
        taken.add(name)
        planned[path] = output_dir / name
    return planned
