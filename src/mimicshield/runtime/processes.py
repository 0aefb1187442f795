"""Where this process stands in a run that ``accelerate launch`` spread over processes.

``accelerate`` is imported only when the environment says several processes were launched, so a
lone run never pays for it. What the processes do with their place (``shard``, one
record part each, ``records.merge_part_files`` by the main process) is ``run.protect_files``'s
business.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import torch

from ..models import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's index among ``count`` (``accelerate launch``), or a lone process.

    Attributes:
        index: this process's rank, 0 for the main process.
        count: processes in the run.
        local_count: processes on this machine (they share its memory).
        device: the device accelerate assigned, or None for a lone process.
    """

    index: int = 0
    count: int = 1
    local_count: int = 1
    device: torch.device | None = None

    @classmethod
    def start(cls, device: str) -> Processes:
        """Join the run ``accelerate launch`` started (WORLD_SIZE > 1), or be a lone process.

        ``device`` is the user's ``--device``: ``auto`` takes the device accelerate assigns.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        from accelerate import PartialState  # imported only when launched by accelerate

        use_cpu = device == "cpu" or not torch.cuda.is_available()
        state = PartialState(cpu=use_cpu)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        return cls(
            state.process_index,
            state.num_processes,
            local,
            state.device if device == "auto" else resolve_device(device),
        )

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (index 0), which merges the record parts of a run."""
        return self.index == 0

    def record_path(self, folder: Path) -> Path:
        """The run's record path in ``folder``: protect-<UTC time>[-N].json, a name not yet taken.

        The main process chooses it and broadcasts it, so that every process agrees.
        """
        stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
        name, counter = f"protect-{stamp}.json", 2
        while (folder / name).exists():
            name, counter = f"protect-{stamp}-{counter}.json", counter + 1
        chosen = [name]
        if self.count > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(chosen)
        return folder / chosen[0]

    def wait_for_everyone(self) -> None:
        """Block until every process of the run has reached this call (accelerate's barrier)."""
        from accelerate import PartialState

        PartialState().wait_for_everyone()


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
