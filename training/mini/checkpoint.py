"""Atomic save and resume of training state, so a run can be stopped and continued at any time."""

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def save(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict | None:
    """The saved state, or None when there is none yet."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    log.info("resuming from %s at step %d", path, state["step"])
    return state
