"""Results written as they come: ``results.json`` and ``results.csv``, resumable row by row.

A long evaluation must not lose what it measured when it stops, and a re-run must measure again
exactly what its settings changed and nothing else. Every row is keyed (``KEY_COLUMNS``) and
carries two private fields, kept in the JSON and left out of the CSV:

- ``_inputs``: a digest of everything that produced the images the row compares (image content,
  package version, model, budget, method, purifier settings, scenario, seed, ...). A row whose
  digest differs from the current one is measured again from scratch.
- ``_metrics``: metric name → the setting it was measured with (e.g. the CLIP model) and the
  columns it wrote. A metric asked for but absent, or measured with another setting, is measured
  again on that row alone; the row's other values stay.

Both files are rewritten atomically after each batch of rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..filesystem import atomic_write_text

#: The columns that identify a row; everything else in a row is a measurement or a note.
KEY_COLUMNS = ("method", "purifier", "scenario", "variant", "victim", "baseline", "image")
#: Bumped when rows change meaning; a store of another format is discarded.
FORMAT = 2

Row = dict[str, object]


def row_key(row: Mapping[str, object]) -> tuple[str, ...]:
    """The row's identity: its ``KEY_COLUMNS`` values as strings (missing ones as "")."""
    return tuple(str(row.get(column, "")) for column in KEY_COLUMNS)


class ResultsStore:
    """Rows of measurements in ``folder/<name>.json`` and ``folder/<name>.csv``.

    Args:
        folder: output folder; existing results there are loaded so a re-run resumes.
        fingerprint: what every row depends on and rows do not record themselves (the store's
            format); rows stored under another fingerprint are discarded.
        name: file stem, ``results`` for the merged results, another for one process's part.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, object], name: str = "results"):
        self.json_path = folder / f"{name}.json"
        self.csv_path = folder / f"{name}.csv"
        self.fingerprint = fingerprint
        self._rows: dict[tuple[str, ...], Row] = {}
        #: True when the folder held results of another fingerprint, now discarded.
        self.stale = False
        if self.json_path.is_file():
            stored = json.loads(self.json_path.read_text())
            if stored.get("fingerprint") == fingerprint:
                self._rows = {row_key(row): row for row in stored.get("rows", [])}
            else:
                self.stale = True

    @property
    def rows(self) -> list[Row]:
        """The rows in the order they were first added."""
        return list(self._rows.values())

    def has(self, key: tuple[str, ...]) -> bool:
        """Whether a row with this ``row_key`` is stored."""
        return key in self._rows

    def missing_metrics(
        self, key: tuple[str, ...], inputs: str, settings: Mapping[str, str]
    ) -> list[str]:
        """The metrics of ``settings`` (name → setting) that the row ``key`` lacks for ``inputs``.

        All of them when the row is absent or was computed from other inputs.
        """
        row = self._rows.get(key)
        if row is None or row.get("_inputs") != inputs:
            return list(settings)
        measured = row.get("_metrics", {})
        return [
            name
            for name, setting in settings.items()
            if measured.get(name, {}).get("setting") != setting
        ]

    def update(self, key: tuple[str, ...], inputs: str, values: Row, measured: Row) -> Row:
        """The row ``key`` for ``inputs`` with ``values`` and ``measured`` merged in (not stored).

        A row of other inputs is replaced; metrics measured again replace their old columns.
        """
        old = self._rows.get(key)
        if old is None or old.get("_inputs") != inputs:
            old = dict(zip(KEY_COLUMNS, key, strict=True)) | {"_inputs": inputs, "_metrics": {}}
        row = {
            column: value
            for column, value in old.items()
            if column not in _columns_of(old.get("_metrics", {}), measured)
        }
        return row | values | {"_metrics": old.get("_metrics", {}) | measured}

    def forget_changed(self, settings: Mapping[str, str]) -> None:
        """Drop the values of metrics that rows hold under another setting than ``settings``."""
        changed = False
        for key, row in self._rows.items():
            measured = row.get("_metrics", {})
            stale = {
                n: m for n, m in measured.items() if n in settings and m["setting"] != settings[n]
            }
            if stale:
                kept = {c: v for c, v in row.items() if c not in _columns_of(measured, stale)}
                kept["_metrics"] = {n: m for n, m in measured.items() if n not in stale}
                self._rows[key], changed = kept, True
        if changed:
            self._write()

    def add(self, rows: Iterable[Row]) -> None:
        """Add or replace rows (by key) and rewrite both files."""
        for row in rows:
            self._rows[row_key(row)] = row
        self._write()

    def keep(self, wanted: Callable[[Row], bool]) -> None:
        """Drop the rows ``wanted`` rejects (those of settings no longer asked for)."""
        kept = {key: row for key, row in self._rows.items() if wanted(row)}
        if len(kept) != len(self._rows):
            self._rows = kept
            self._write()

    def remove_files(self) -> None:
        """Delete both results files (a process's part, once the main process merged it)."""
        self.json_path.unlink(missing_ok=True)
        self.csv_path.unlink(missing_ok=True)

    def _write(self) -> None:
        document = {"fingerprint": self.fingerprint, "rows": self.rows}
        # inf is written as JSON's Infinity, which json.loads reads back.
        atomic_write_text(self.json_path, json.dumps(document, indent=1, default=str))
        columns = list(KEY_COLUMNS)
        for row in self._rows.values():
            columns.extend(c for c in row if c not in columns and not c.startswith("_"))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self._rows.values())
        atomic_write_text(self.csv_path, table.getvalue())


def _columns_of(old: Mapping[str, dict], measured: Mapping[str, dict]) -> set[str]:
    """The columns that metrics measured again wrote before."""
    return {column for name in measured for column in old.get(name, {}).get("columns", [])}
