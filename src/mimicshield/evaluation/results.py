"""Results written as they come: ``results.json`` and ``results.csv``, resumable by row key.

A long evaluation must not lose what it measured when it stops, and a re-run must not measure it
again: every row is keyed, both files are rewritten atomically after each row, and a store opened
on an existing folder knows which keys are done.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from ..filesystem import atomic_write_text

#: The columns that identify a row; everything else in a row is a measurement.
KEY_COLUMNS = ("method", "purifier", "scenario", "variant", "image")


def row_key(row: dict[str, object]) -> tuple[str, ...]:
    return tuple(str(row.get(column, "")) for column in KEY_COLUMNS)


class ResultsStore:
    """Rows of measurements in ``folder/results.json`` and ``folder/results.csv``.

    Args:
        folder: output folder; existing results there are loaded so a re-run resumes.
        fingerprint: what the rows were computed with (model, budget, seed, ...); rows stored under
            another fingerprint are discarded rather than mixed with new ones.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, object]):
        self.json_path = folder / "results.json"
        self.csv_path = folder / "results.csv"
        self.fingerprint = fingerprint
        self.rows: list[dict[str, object]] = []
        #: True when the folder held results of other settings, now discarded.
        self.stale = False
        if self.json_path.is_file():
            stored = json.loads(self.json_path.read_text())
            if stored.get("fingerprint") == fingerprint:
                self.rows = stored.get("rows", [])
            else:
                self.stale = True
        self._done = {row_key(row) for row in self.rows}

    def has(self, key: tuple[str, ...]) -> bool:
        return key in self._done

    def add(self, rows: Iterable[dict[str, object]]) -> None:
        """Append rows and rewrite both files."""
        for row in rows:
            self.rows.append(row)
            self._done.add(row_key(row))
        self._write()

    def _write(self) -> None:
        document = {"fingerprint": self.fingerprint, "rows": self.rows}
        atomic_write_text(self.json_path, json.dumps(document, indent=1, default=str))
        columns = list(KEY_COLUMNS)
        for row in self.rows:
            columns.extend(column for column in row if column not in columns)
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, table.getvalue())
