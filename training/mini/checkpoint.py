"""Atomic save and resume of training state, so a run can be stopped and continued at any time.

A training checkpoint holds the ``state_dict`` of every named part (models, EMA copies,
optimizer), the state of the one generator that all of a stage's randomness is drawn from,
the step reached and the seconds spent. Restoring all of it is what makes a resumed run
continue exactly as an uninterrupted one would.
"""

import logging
import os
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """A model or an optimizer: anything with ``state_dict`` and ``load_state_dict``."""

    def state_dict(self) -> dict:
        """Everything needed to restore the object later, in a form ``torch.save`` stores."""
        ...

    def load_state_dict(self, state_dict: dict) -> object:
        """Restore the object in place from what ``state_dict`` returned."""
        ...


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


def save_training(
    path: Path,
    parts: dict[str, Stateful],
    generator: torch.Generator,
    step: int,
    elapsed: float,
) -> None:
    """Save every part under its name, the generator state, the step and ``elapsed`` seconds."""
    state = {name: part.state_dict() for name, part in parts.items()}
    save(path, dict(state, generator=generator.get_state(), step=step, elapsed=elapsed))


def restore_training(
    path: Path, parts: dict[str, Stateful], generator: torch.Generator
) -> tuple[int, float]:
    """Load what ``save_training`` wrote into ``parts`` and ``generator``, in place.

    Returns the step reached and the seconds spent so far; ``(0, 0.0)``, with everything left
    as it is, when there is no checkpoint yet.
    """
    state = load(path)
    if state is None:
        return 0, 0.0
    for name, part in parts.items():
        part.load_state_dict(state[name])
    generator.set_state(state["generator"])
    return state["step"], state["elapsed"]
