"""The JSON record of a protection run: writing it, merging per-process parts, resuming from it.

The conventions:

- A process writes ``<run>.part-<i>-of-<n>.json``; the main process merges the parts into
  ``<run>.json`` (images in input order) and removes them.
- A record carries a settings fingerprint (see ``settings_fingerprint``). An image counts as
  done when a record in the output folder with the same fingerprint lists it as ok, with the same
  input content (SHA-256) and the same output path, and that output file is still there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..filesystem import atomic_write_text, file_sha256
from ..models import resolve_dtype, versions
from ..models.ensemble import Surrogate
from .jobs import JPEG_BUDGET_NOTE, FileResult, ProtectionJob

logger = logging.getLogger(__name__)

#: The glob that finds every protection record in an output folder (parts included).
RECORD_GLOB = "protect-*.json"


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
    atomic_write_text(record_path, json.dumps(merged, indent=2, default=str))
    for path in part_paths:
        path.unlink()
    return merged


def read_records(folder: Path, *, excluding_run: Path | None = None) -> list[dict]:
    """Every readable protection record in ``folder``; unreadable ones are skipped (logged).

    Args:
        folder: the output folder.
        excluding_run: the record of the run in progress; it and its parts are left out, so
            that processes that start at different times all resume from the same earlier runs.
    """
    records = []
    for path in sorted(folder.glob(RECORD_GLOB)):
        if excluding_run is not None and path.name.startswith(excluding_run.stem + "."):
            continue
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


def settings_fingerprint(job: ProtectionJob, model_name: str, dtype: str | torch.dtype) -> str:
    """SHA-256 of the settings that decide what a protected file looks like.

    Included: the method's full record (budget, prompt, start, update rule, step schedule,
    weights, the stages of a staged run; a target image by its content), the model's name and
    precision, the seed, the mask's content, the output format ("auto" when each input keeps its
    own), the JPEG quality (for JPEG output only: it changes nothing else), whether metadata is
    stripped, and the large-image way with its settings (whether a given image goes that way is
    checked per image, see ``reuse_completed``).
    Left out on purpose: batch size, device, process count and speed switches (how the work is
    spread and computed, not what is asked for), and package versions (an upgrade should not
    redo finished work). A re-run skips an image only under the same fingerprint.
    """
    method = job.method.as_record()
    # A target image counts by its content (the record names only its shape), stage by stage.
    stages = getattr(job.method, "stages", None)
    for record, configured in (
        zip(method["stages"], (stage.method for stage in stages), strict=True)
        if stages is not None
        else [(method, job.method)]
    ):
        target = getattr(configured, "target", None)
        if isinstance(target, torch.Tensor):
            record["target"] = _tensor_sha256(target)
    settings = {
        "method": method,
        "model": str(model_name),
        "dtype": str(resolve_dtype(dtype)).removeprefix("torch."),
        "seed": job.seed,
        "mask": None if job.mask is None else _tensor_sha256(job.mask),
        "output_format": job.image_format or "auto",
        "jpeg_quality": job.quality if job.image_format == "jpeg" else None,
        "strip_metadata": job.strip_metadata,
        "large_images": {"way": job.large_images.name, **asdict(job.large_images)},
    }
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    values = tensor.detach().cpu().contiguous().float().numpy()
    return "sha256:" + hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()


def reuse_completed(
    inputs: list[Path],
    outputs: dict[Path, Path],
    completed: dict[str, dict],
    ways: dict[Path, str] | None = None,
) -> tuple[list[FileResult], list[Path]]:
    """Split inputs into those an earlier run already protected and those still to do.

    Args:
        inputs: image files.
        outputs: each input's output path (``plan_outputs`` over the whole run).
        completed: ``completed_outputs`` of the output folder's records.
        ways: how this run would protect each input ("whole" or the large-image way's name);
            an earlier result is reused only if it was protected the same way (whether an image
            fits whole depends on the memory budget, which the fingerprint leaves out). None:
            not checked.

    Returns:
        (results copied from the earlier records with ``reused`` set, inputs still to protect).
    """
    reused: list[FileResult] = []
    remaining: list[Path] = []
    known = {item.name for item in fields(FileResult)}
    for path in inputs:
        output = outputs[path]
        entry = completed.get(str(output.resolve()))
        digest = file_sha256(path) if entry is not None else None
        same_way = ways is None or (entry or {}).get("protection", {}).get("way") == ways.get(path)
        if digest is not None and same_way and is_done(entry, output, digest):
            earlier = {key: value for key, value in entry.items() if key in known}
            reused.append(FileResult(**{**earlier, "input": str(path), "reused": True}))
        else:
            remaining.append(path)
    return reused, remaining


def write_record(
    path: Path,
    job: ProtectionJob,
    model: Surrogate,
    results: list[FileResult],
    extra: dict[str, object],
) -> None:
    """Write the run's JSON provenance record (method, parameters, seed, versions, per image).

    The record carries ``settings_fingerprint`` (see ``settings_fingerprint``) for resuming.
    """
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "units": "linf_255 and eps_255 are in 1/255 of the [0, 1] range, whatever the bit depth; "
        "psnr_db in dB; latent shifts in scaled latent units",
        "method": job.method.as_record(),
        "seed": job.seed,
        "batch_size": job.batch_size,
        "output_format": job.image_format or "auto (lossless inputs keep their format)",
        "jpeg": {"quality": job.quality, "budget_checked_on": JPEG_BUDGET_NOTE}
        if job.image_format == "jpeg"
        else None,
        "strip_metadata": job.strip_metadata,
        "mask": None if job.mask is None else f"{tuple(job.mask.shape[-2:])}",
        "model": model.describe(),
        "settings_fingerprint": settings_fingerprint(job, model.name, model.dtype),
        "versions": versions(),
        **extra,
        "images": [asdict(result) for result in results],
    }
    atomic_write_text(path, json.dumps(record, indent=2, default=str))
