"""How a file too large to protect whole is protected: at a working resolution, or in tiles.

The memory plan says which inputs fit whole (``run.fit_memory``); the others go one of two ways,
each a small frozen configuration with ``size`` (what the networks see, for the memory plan),
``protect`` and ``describe`` (for the record):

- ``WorkingResolution`` (the default): protect at the size the mimicking model sees (short side
  = the model's native resolution unless given) and apply the enlarged perturbation natively.
  Measured on the miniature (bench/README.md, "Tiling"), it is about as strong as whole-image
  protection at native size, stronger once a pipeline downscales the image, seamless, and its
  cost does not grow with the image.
- ``Tiles``: native-resolution protection tile by tile (``tiling.protect_tiled``), for pipelines
  that crop at native resolution; it costs more and shows faint seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.ensemble import Surrogate
from ..pgd import StepCallback
from ..protect import Protection
from ..resolution import protect_at_resolution, working_size
from ..tensors import check_positive
from ..tiling import protect_tiled, tile_grid


@dataclass(frozen=True)
class WorkingResolution:
    """Protect at a working resolution, apply the enlarged perturbation at native size.

    Attributes:
        short_side: pixels of the shorter side at the working resolution; None: the model's
            native resolution (512 for SD 1.x, 1024 for SDXL, SD3 and FLUX; an ensemble's
            largest member's).
    """

    name = "working-resolution"
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.short_side is not None:
            check_positive(self.short_side, "working short side")

    def check(self, model: Surrogate) -> None:
        """Nothing to refuse: any working size works with any model."""

    def size(self, model: Surrogate, height: int, width: int) -> tuple[int, int]:
        """(H, W) the networks see for a native ``height`` × ``width`` image."""
        return working_size(height, width, self._short_side(model))

    def protect(
        self,
        images: torch.Tensor,
        method: Protection,
        model: Surrogate,
        *,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        callback: StepCallback | None,
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → protected, same shape, within the budget on every pixel."""
        return protect_at_resolution(
            images,
            method,
            model,
            short_side=self._short_side(model),
            mask=mask,
            generator=generator,
            callback=callback,
        )

    def describe(self, model: Surrogate, height: int, width: int) -> dict[str, object]:
        """The record's account of how a ``height`` × ``width`` image was protected."""
        return {"way": self.name, "working_size": list(self.size(model, height, width))}

    def _short_side(self, model: Surrogate) -> int:
        return self.short_side or model.native_resolution


@dataclass(frozen=True)
class Tiles:
    """Protect at native resolution, tile after tile (see ``tiling.protect_tiled``).

    Attributes:
        tile: tile side in pixels, a multiple of the model's ``size_multiple`` (8 always works
            for SD 1.x/2.x and SDXL, 16 for SD3 and FLUX); None: the model's native resolution.
        overlap: pixels shared by neighbouring tiles; None: a quarter of the tile.
    """

    name = "tiles"
    tile: int | None = None
    overlap: int | None = None

    def __post_init__(self) -> None:
        # Checked before any file is read: a bad tile must not fail a run half done. A multiple
        # of 8 is a multiple of every UNet family's factor; ``check`` refuses the rest once the
        # model is known (SD3 and FLUX need 16: the VAE's 8 times the 2×2 patches).
        if self.tile is not None:
            check_positive(self.tile, "tile")
            if self.tile % 8:
                raise ValueError(f"tile must be a multiple of 8 pixels, got {self.tile}")
        if self.overlap is not None:
            limit = self.tile if self.tile is not None else float("inf")
            if isinstance(self.overlap, bool) or not 0 <= self.overlap < limit:
                raise ValueError(f"tile overlap must lie in [0, tile), got {self.overlap}")

    def check(self, model: Surrogate) -> None:
        """Refuse settings ``model`` cannot tile with (its native tile and factor known now).

        Raises:
            ValueError: the tile is not a multiple of the model's ``size_multiple``, or the
                overlap is not smaller than the tile.
        """
        tile = self._tile(model)
        if tile % model.size_multiple:
            raise ValueError(
                f"tile must be a multiple of {model.size_multiple} for this model, got {tile}"
            )
        if not self._overlap(tile) < tile:
            raise ValueError(
                f"tile overlap must be smaller than the tile {tile}, got {self.overlap}"
            )

    def size(self, model: Surrogate, height: int, width: int) -> tuple[int, int]:
        """(H, W) the networks see: one tile (smaller where the image is)."""
        tile = self._tile(model)
        return min(tile, height), min(tile, width)

    def protect(
        self,
        images: torch.Tensor,
        method: Protection,
        model: Surrogate,
        *,
        mask: torch.Tensor | None,
        generator: torch.Generator,
        callback: StepCallback | None,
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → protected, same shape, within the budget on every pixel.

        ``callback`` sees the steps of all tiles as one count (step of tiles × steps), so a
        progress bar advances evenly over the file.
        """
        tile = self._tile(model)

        def each_step(tile_index: int, tiles: int, step: int, steps: int, value: float) -> None:
            if callback is not None:
                callback((tile_index - 1) * steps + step, tiles * steps, value)

        return protect_tiled(
            images,
            method,
            model,
            tile=tile,
            overlap=self._overlap(tile),
            mask=mask,
            generator=generator,
            callback=each_step,
        )

    def describe(self, model: Surrogate, height: int, width: int) -> dict[str, object]:
        """The record's account of how a ``height`` × ``width`` image was protected."""
        tile = self._tile(model)
        overlap = self._overlap(tile)
        tiles = len(tile_grid(height, width, tile, overlap))
        return {"way": self.name, "tile": tile, "overlap": overlap, "tiles": tiles}

    def _tile(self, model: Surrogate) -> int:
        return self.tile or model.native_resolution

    def _overlap(self, tile: int) -> int:
        return tile // 4 if self.overlap is None else self.overlap


#: ``--large-images`` names → their default configuration.
LARGE_IMAGE_WAYS: dict[str, type[WorkingResolution] | type[Tiles]] = {
    WorkingResolution.name: WorkingResolution,
    Tiles.name: Tiles,
}

LargeImages = WorkingResolution | Tiles
