"""Protecting files at scale: what only the front ends (command line, web page, bench) use.

- ``run``: ``protect_files``, the one function every front end calls to protect files;
- ``files``: which files a list of paths names and where each one's copy goes;
- ``jobs``: protecting, saving and verifying files batch by batch (``FileResult``);
- ``records``: the JSON record of a run, its settings fingerprint, resume and merging;
- ``memory``: fitting a run into a memory budget (batch size, precision);
- ``speed``: layout, compilation, slicing and tiling switches of a loaded model;
- ``processes``: a process's place in an ``accelerate launch`` run, and its share of inputs;
- ``benchmark``: time, memory and FLOPs per protection step.

Nothing in the core, the models, mimicry, metrics or evaluation imports this package.
"""

from __future__ import annotations

from .files import InputError, collect_inputs, plan_outputs
from .jobs import FileResult
from .memory import MemoryPlan, MemoryPlanError, parse_memory
from .processes import Processes
from .run import RunOptions, RunSummary, protect_files
from .speed import SpeedOptions

__all__ = [
    "FileResult",
    "InputError",
    "MemoryPlan",
    "MemoryPlanError",
    "Processes",
    "RunOptions",
    "RunSummary",
    "SpeedOptions",
    "collect_inputs",
    "parse_memory",
    "plan_outputs",
    "protect_files",
]
