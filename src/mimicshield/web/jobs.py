"""What a job of the page does with files: limits, temporary folders, cancellation, the zip.

Plain functions and small classes without Gradio, so that they are tested without a browser.
Protection itself is ``protect_files``: the page gets the command line's formats, metadata,
records, resume and per-file failures by calling it, and adds nothing of its own to them.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import LatentDiffusion, ProtectionMethod, RunOptions, RunSummary, protect_files
from ..runtime import FileResult

#: The zip offered beside the protected files: all of them and the run's JSON record.
ZIP_NAME = "protected-images.zip"


class UploadError(ValueError):
    """The uploads as a whole cannot be taken (none, or too many); the message says why."""


class JobCancelled(Exception):
    """The person who started the job pressed Cancel."""


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one job's uploads (``--max-files``, ``--max-upload-mb``).

    The size cap is enforced by the server as each file arrives (Gradio's ``max_file_size``),
    so an oversized file never reaches the disk; the count is checked here when a job starts.
    """

    max_files: int = 20
    max_file_mb: float = 50

    @property
    def max_file_bytes(self) -> int:
        """The per-file upload cap in bytes."""
        return int(self.max_file_mb * 2**20)


def check_uploads(uploads: Sequence[str | Path] | None, limits: UploadLimits) -> list[Path]:
    """The uploaded files as paths, if there are some and not too many.

    Raises:
        UploadError: no file, or more than ``limits.max_files``.
    """
    paths = [Path(upload) for upload in uploads or []]
    if not paths:
        raise UploadError("Add one or more images first (drag them onto the upload area).")
    if len(paths) > limits.max_files:
        raise UploadError(
            f"{len(paths)} files were given; this page takes at most {limits.max_files} at a "
            "time (--max-files). Protect them in smaller groups."
        )
    return paths


class JobFolders:
    """One temporary folder per browser session for its latest job, all under one root.

    The page shows and previews a job's files after it ends, so a session's folder lives until
    its next job starts or the page is closed; the server removes the root at exit.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, Path] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Path:
        """A new empty folder for the session's job; its previous job's folder is removed."""
        self.release(session)
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        with self._lock:
            self._folders[session] = folder
        return folder

    def release(self, session: str) -> None:
        """Remove the session's folder, if it has one."""
        with self._lock:
            folder = self._folders.pop(session, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


class Cancellations:
    """The cancel flags of each browser session's jobs, running or waiting in the queue.

    Protect registers a flag before its job waits in the queue; the job claims the oldest
    unclaimed flag of its session when it starts (the queue runs a session's jobs in order) and
    checks it at every PGD step. Cancel sets every flag of the session, so it stops the running
    job and the jobs waiting behind it.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[threading.Event]] = {}
        self._running: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()

    def begin(self, session: str) -> None:
        """Register the flag of a job about to wait in the queue."""
        with self._lock:
            self._waiting.setdefault(session, []).append(threading.Event())

    def claim(self, session: str) -> threading.Event:
        """The flag of the job starting now: the session's oldest waiting one (or a fresh one)."""
        with self._lock:
            waiting = self._waiting.get(session, [])
            flag = waiting.pop(0) if waiting else threading.Event()
            self._running.setdefault(session, []).append(flag)
            return flag

    def finish(self, session: str, flag: threading.Event) -> None:
        """The job holding ``flag`` ended, cancelled or not."""
        with self._lock:
            running = self._running.get(session, [])
            if flag in running:
                running.remove(flag)

    def cancel(self, session: str) -> None:
        """Stop the session's running job at its next PGD step, and the jobs waiting behind it."""
        with self._lock:
            for flag in [*self._waiting.get(session, []), *self._running.get(session, [])]:
                flag.set()

    def forget(self, session: str) -> None:
        """Cancel and drop all the session's flags (the page was closed)."""
        self.cancel(session)
        with self._lock:
            self._waiting.pop(session, None)
            self._running.pop(session, None)


@dataclass
class JobOutcome:
    """What a job hands back to the page.

    Attributes:
        summary: ``protect_files``' summary (results in upload order, the record's path).
        downloads: the protected files as written, then the zip (when something was protected).
        messages: one sentence per file that failed, naming it by its uploaded name.
    """

    summary: RunSummary
    downloads: list[Path]
    messages: list[str]

    @property
    def protected(self) -> list[FileResult]:
        """The results of the files that were protected."""
        return [result for result in self.summary.results if result.ok]


def run_job(
    uploads: Sequence[Path],
    folder: Path,
    method: ProtectionMethod,
    model: LatentDiffusion,
    options: RunOptions,
    *,
    cancelled: threading.Event,
    on_start: Callable[[int], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> JobOutcome:
    """Protect the uploads into ``folder/protected`` with ``protect_files`` and zip the result.

    Raises:
        JobCancelled: ``cancelled`` was set; checked before the job and after every PGD step.
    """
    if cancelled.is_set():
        raise JobCancelled

    def step(step: int, steps: int, value: float) -> None:
        if cancelled.is_set():
            raise JobCancelled
        if on_step is not None:
            on_step(step, steps, value)

    summary = protect_files(
        uploads,
        folder / "protected",
        method,
        model,
        options,
        on_start=on_start,
        on_step=step,
        on_file=on_file,
    )
    outputs = [Path(result.output) for result in summary.results if result.ok]
    downloads = list(outputs)
    if outputs:
        downloads.append(bundle(outputs, summary.record_path, folder / ZIP_NAME))
    messages = [display_error(result) for result in summary.failed]
    return JobOutcome(summary, downloads, messages)


def bundle(files: Sequence[Path], record: Path, zip_path: Path) -> Path:
    """A zip of ``files`` and the run's JSON ``record``, side by side, under their own names.

    Images are stored uncompressed: PNG, WebP and deflated TIFF are compressed already.
    """
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in [*files, record]:
            archive.write(path, arcname=path.name)
    return zip_path


def display_error(result: FileResult) -> str:
    """A failed file's sentence with its uploaded name instead of the server's temporary path."""
    path = Path(result.input)
    return (result.error or f"{path}: failed").replace(str(path), path.name)
