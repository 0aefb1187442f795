"""Tiled protection: any image size at native resolution, with the model seeing one tile at a time.

``protect`` optimises a whole image at once, so its memory grows with the pixels. Here the image
is covered by overlapping tiles of ``tile`` × ``tile`` pixels (``tile_grid``), and each tile is a
plain ``protect`` call on a crop, so the networks only ever see a (B, 3, tile, tile) batch; what
grows with the image is only its pixel buffers.

How the budget and the seams are handled (sequential tiles, each owning a core):

- ``tile_cores`` splits the image into disjoint cores, one per tile, cutting each overlap in the
  middle. A tile may change only its core (``protect``'s mask); the rest of the tile is context
  that its encoder sees but that it leaves alone.
- Tiles run one after another on the *current* image: a tile's context holds the final
  perturbation of the tiles before it (above and to the left) and clean pixels after it.
- Every pixel is therefore optimised exactly once, inside the ε-ball around the *original* pixel
  (its core was still clean when its tile started), so the budget holds on every pixel with no
  blending or clipping afterwards, and an image that fits in one tile gets exactly ``protect``'s
  result. A core pixel lies at least ``overlap // 2`` pixels inside its tile (except at the
  image's border), so its encoder sees context on every side; and since each tile sees its
  predecessors' perturbation, it optimises its core against the neighbours it will really have.

The alternative, protecting tiles independently and blending their perturbations with a window,
also keeps the budget (a convex combination of points of a ball stays in it), but averages
perturbations that were optimised separately and partly cancels them in the overlaps.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import torch

from .models.ensemble import Surrogate
from .protect import Protection, protect
from .tensors import check_images, check_mask

#: callback(tile, tiles, step, steps, value) after each PGD step: tile is 1-based like step.
TileCallback = Callable[[int, int, int, int, float], None]


class Box(NamedTuple):
    """A rectangle of pixels: rows top … top + height − 1, columns left … left + width − 1."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) slices, for ``image[..., rows, columns]``."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side start, evenly spread, the first at 0, the last flush.

    With n = ⌈(length − overlap) / (tile − overlap)⌉ tiles, consecutive starts differ by at most
    tile − overlap, so neighbours share at least ``overlap`` pixels; spreading the starts evenly
    (rather than stepping by tile − overlap and squeezing the last tile) gives every seam about
    the same context. A side no longer than ``tile`` gets one tile at 0.

    Args:
        length: pixels along the side (≥ 1).
        tile: tile side in pixels (≥ 1).
        overlap: pixels shared by neighbouring tiles, 0 ≤ overlap < tile.

    Returns:
        Increasing start offsets.
    """
    _check_tiling(tile, overlap)
    if length < 1:
        raise ValueError(f"the image side must be at least 1 pixel, got {length}")
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [index * (length - tile) // (count - 1) for index in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """The tiles that cover a height × width image, row by row, each min(tile, side) wide.

    Every pixel is covered, every tile lies inside the image, neighbours overlap by at least
    ``overlap`` pixels and the last row and column of tiles are flush with the border.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        tile: tile side in pixels; a side shorter than it gets one tile of the side's length.
        overlap: pixels shared by neighbouring tiles, 0 ≤ overlap < tile.

    Returns:
        Boxes in row-major order (the order ``protect_tiled`` runs them).
    """
    rows = tile_starts(height, tile, overlap)
    columns = tile_starts(width, tile, overlap)
    tile_height, tile_width = min(tile, height), min(tile, width)
    return [Box(top, left, tile_height, tile_width) for top in rows for left in columns]


def tile_cores(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """The disjoint core of each tile of ``tile_grid``, same order: the pixels that tile changes.

    Cores cut each overlap in the middle, so they partition the image, and a core pixel is at
    least ``overlap // 2`` pixels from its tile's border wherever that border is not the image's.
    """
    row_cores = _side_cores(height, tile, overlap)
    column_cores = _side_cores(width, tile, overlap)
    return [
        Box(top, left, bottom - top, right - left)
        for top, bottom in row_cores
        for left, right in column_cores
    ]


def protect_tiled(
    images: torch.Tensor,
    method: Protection,
    model: Surrogate,
    *,
    tile: int,
    overlap: int,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: TileCallback | None = None,
) -> torch.Tensor:
    """``protect`` tile by tile: each tile changes its core, in the context of the tiles before.

    Peak memory of the networks is that of ``protect`` on a (B, 3, tile, tile) batch whatever the
    image size; meant for one large image at a time (B = 1), any B works (the tiles of all images
    at one place form one batch). The module docstring explains the design.

    Args:
        images: (B, 3, H, W) float in [0, 1], any H and W. Not modified.
        method: a configured method from ``METHODS``; its budget applies to every pixel.
        model: the latent diffusion model, or an ``Ensemble``; its state is restored afterwards.
        tile: tile side in pixels, a positive multiple of ``model.size_multiple``.
        overlap: pixels shared by neighbouring tiles, 0 ≤ overlap < tile; the context a core
            pixel sees past a seam is at least overlap // 2.
        mask: (B or 1, 1, H, W) in [0, 1]: 1 where the perturbation may go, 0 where pixels stay.
        generator: the only source of randomness, drawn tile after tile; same seed → same output.
            An image that fits in one tile gets exactly ``protect``'s result for the same seed.
        callback: called after each PGD step with (tile, tiles, step, steps, objective value),
            tile and step counted from 1.

    Returns:
        (B, 3, H, W) in [0, 1], same dtype and device as ``images``, within ``method.budget`` of
        ``images`` on every pixel.
    """
    # 1. Check the inputs; work on a float32 copy that tiles update in place.
    check_images(images)
    if mask is not None:
        check_mask(mask, images)
    _check_tile_for(model, tile)
    height, width = images.shape[-2:]
    current = images.detach().to(torch.float32, copy=True)
    boxes = tile_grid(height, width, tile, overlap)
    cores = tile_cores(height, width, tile, overlap)

    # 2. Each tile in turn: protect the crop of the current image, changing only its core.
    for index, (box, core) in enumerate(zip(boxes, cores, strict=True), start=1):
        rows, columns = box.slices
        tile_mask = _core_mask(box, core, mask, current)
        protected = protect(
            current[..., rows, columns],
            method,
            model,
            mask=tile_mask,
            generator=generator,
            callback=_tile_callback(callback, index, len(boxes)),
        )
        core_rows, core_columns = _relative(core, box).slices
        current[..., core.slices[0], core.slices[1]] = protected[..., core_rows, core_columns]

    # 3. Hand back in the caller's dtype and device.
    return current.to(images.device, images.dtype)


def _side_cores(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each tile's core along one side: overlaps cut in the middle."""
    starts = tile_starts(length, tile, overlap)
    side = min(tile, length)
    cuts = [(previous + side + following) // 2 for previous, following in pairwise(starts)]
    bounds = [0, *cuts, length]
    return list(pairwise(bounds))


def _relative(core: Box, box: Box) -> Box:
    """``core`` in the coordinates of the crop ``box``."""
    return Box(core.top - box.top, core.left - box.left, core.height, core.width)


def _core_mask(box: Box, core: Box, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B or 1, 1, tile_h, tile_w): 1 on the core (times the caller's mask there), 0 elsewhere."""
    inside = torch.zeros((1, 1, box.height, box.width), dtype=like.dtype, device=like.device)
    rows, columns = _relative(core, box).slices
    inside[..., rows, columns] = 1
    if mask is None:
        return inside
    return inside * mask[..., box.slices[0], box.slices[1]].to(inside)


def _tile_callback(
    callback: TileCallback | None, tile: int, tiles: int
) -> Callable[[int, int, float], None] | None:
    """``protect``'s (step, steps, value) callback, reporting ``tile`` of ``tiles`` as well."""
    if callback is None:
        return None
    return lambda step, steps, value: callback(tile, tiles, step, steps, value)


def _check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a whole number of pixels ≥ 1, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be a whole number in [0, tile={tile}), got {overlap!r}")


def _check_tile_for(model: Surrogate, tile: int) -> None:
    factor = model.size_multiple
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1 or tile % factor:
        raise ValueError(
            f"tile must be a positive multiple of the model's size multiple {factor}, got {tile!r}"
        )
