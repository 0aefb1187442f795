"""The code style the project holds itself to, as pyproject.toml configures ruff.

Lint rules (pydocstyle with the Google convention included) and formatting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ["src", "tests", "bench", "training", "conftest.py"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *CHECKED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
