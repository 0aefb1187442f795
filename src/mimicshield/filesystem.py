"""Files that appear whole or not at all, and file digests.

Every file mimicshield writes (protected images, records, results, reports) goes through
``atomic_output``: the bytes go to a temporary file beside the destination, which is renamed
into place only when writing succeeded, so a crash or a full disk never leaves half a file where
a resumed run would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` when the block ends without error.

    The temporary file (``.partial-*`` beside ``path``, so the rename stays on one file system)
    is removed when the block raises; ``path`` is then left as it was.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=path.suffix, dir=path.parent)
    try:
        # readable too: multi-page TIFF writers read back the pages they have written
        with os.fdopen(handle, "w+b") as stream:
            yield stream
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_output``)."""
    with atomic_output(path) as stream:
        stream.write(text.encode("utf-8"))


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
