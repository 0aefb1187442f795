"""mimicshield: protect images against diffusion-based mimicry (Xue et al., ICLR 2024)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .budget import Budget, BudgetError
from .methods import METHODS, ProtectionMethod, Stage, Staged
from .models import DEFAULT_MODEL, Ensemble, LatentDiffusion, ModelUnavailableError
from .protect import noise_control, protect
from .resolution import protect_at_resolution
from .runtime import RunOptions, RunSummary, protect_files
from .tiling import protect_tiled, tile_grid

try:
    __version__ = version("mimicshield")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "Budget",
    "BudgetError",
    "Ensemble",
    "LatentDiffusion",
    "ModelUnavailableError",
    "ProtectionMethod",
    "RunOptions",
    "RunSummary",
    "Stage",
    "Staged",
    "noise_control",
    "protect",
    "protect_at_resolution",
    "protect_files",
    "protect_tiled",
    "tile_grid",
    "__version__",
]
