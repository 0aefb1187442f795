"""Splitting a run over processes, merging their records, and recognising work already done.

Functions on lists, record dicts and record files; ``processes`` says where a process stands in
an ``accelerate launch``, and the CLI wires the two together. The conventions:

- Every process sees the same input list in the same order, so ``shard(items, i, n)`` gives each
  process a disjoint share and together they cover the list, with no communication.
- A process writes ``<run>.part-<i>-of-<n>.json``; the main process merges the parts into
  ``<run>.json`` (images in input order) and removes them.
- A record carries a settings fingerprint (see ``batch.settings_fingerprint``). An image counts as
  done when a record in the output folder with the same fingerprint lists it as ok, with the same
  input content (SHA-256) and the same output path, and that output file is still there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The glob that finds every protection record in an output folder (parts included).
RECORD_GLOB = "protect-*.json"


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The share of process ``index`` of ``count``: every ``count``-th item from ``index``.

    Round robin rather than contiguous blocks, so a folder sorted by name (often by size or
    date) spreads its large images over all processes.

    Raises:
        ValueError: ``count`` < 1 or ``index`` outside [0, count).
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index must lie in [0, {count}) with count ≥ 1, got {index}")
    return list(items[index::count])


def part_record_path(record_path: Path, index: int, count: int) -> Path:
    """Where process ``index`` of ``count`` writes its share of the record at ``record_path``."""
    return record_path.with_name(f"{record_path.stem}.part-{index}-of-{count}.json")


def merge_records(parts: Sequence[dict], order: Sequence[str]) -> dict:
    """One record from the per-process records of one run.

    Args:
        parts: records as written by each process (same settings; ``images`` differ).
        order: input paths (as recorded) in the order the merged record lists them; images not
            in ``order`` follow in the order the parts give them.

    Returns:
        The first part's fields, with ``images`` from all parts in input order and ``processes``
        set to the number of parts.
    """
    if not parts:
        raise ValueError("no records to merge")
    position = {path: rank for rank, path in enumerate(order)}
    images = [image for part in parts for image in part.get("images", [])]
    images.sort(key=lambda image: position.get(image["input"], len(position)))
    return {**parts[0], "processes": len(parts), "images": images}


def merge_part_files(
    record_path: Path, count: int, extra_images: Sequence[dict], order: Sequence[str]
) -> dict:
    """Merge the ``count`` part records of ``record_path`` into it and remove the parts.

    Args:
        record_path: the run's record; its parts are ``part_record_path(record_path, i, count)``.
        count: number of processes, each of which wrote one part.
        extra_images: image entries no process wrote (images reused from earlier runs).
        order: input paths in the order the merged record lists them.

    Returns:
        The merged record, as written (atomically: a crash leaves the parts, not half a file).
    """
    part_paths = [part_record_path(record_path, index, count) for index in range(count)]
    parts = [json.loads(path.read_text()) for path in part_paths]
    merged = merge_records([*parts, {"images": list(extra_images)}], order)
    merged["processes"] = count
    temporary = record_path.with_name(f".{record_path.name}.partial")
    temporary.write_text(json.dumps(merged, indent=2, default=str))
    os.replace(temporary, record_path)
    for path in part_paths:
        path.unlink()
    return merged


def read_records(folder: Path) -> list[dict]:
    """Every readable protection record in ``folder``; unreadable ones are skipped (logged)."""
    records = []
    for path in sorted(folder.glob(RECORD_GLOB)):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            logger.warning("%s: not a readable record (%s); ignored for resuming", path, error)
    return records


def completed_outputs(records: Iterable[dict], fingerprint: str) -> dict[str, dict]:
    """Image entries protected successfully under ``fingerprint``, keyed by resolved output path.

    Later records win, so the newest result for an output is the one reused.
    """
    done: dict[str, dict] = {}
    for record in records:
        if record.get("settings_fingerprint") != fingerprint:
            continue
        for image in record.get("images", []):
            if image.get("ok") and image.get("output") and image.get("input_sha256"):
                done[str(Path(image["output"]).resolve())] = image
    return done


def is_done(entry: dict | None, output: Path, input_sha256: str) -> bool:
    """Whether ``entry`` (from ``completed_outputs``) covers this input and its output file."""
    return entry is not None and entry.get("input_sha256") == input_sha256 and output.is_file()


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
