"""Large images: tiled protection and working-resolution protection keep protect's contract.

The tile grid is checked on its own; protection runs on the tiny model with two PGD steps on a
40 × 56 image in tiles of 16 with an overlap of 8 (24 tiles), so the overlaps are where a broken
design would spend the budget twice.
"""

from __future__ import annotations

import contextlib
from itertools import pairwise

import pytest
import torch

from mimicshield import METHODS, Budget, protect
from mimicshield.budget import quantise_within_budget
from mimicshield.resolution import protect_at_resolution, working_size
from mimicshield.tiling import protect_tiled, tile_cores, tile_grid, tile_starts

BUDGET = Budget.from_255(eps=6, step_size=4, steps=2)  # two steps reach the ball's edge
TILE, OVERLAP = 16, 8
GRIDS = [(40, 56, 16, 8), (64, 64, 16, 0), (17, 100, 16, 15), (9, 30, 16, 4), (16, 16, 16, 8)]


@pytest.fixture(scope="module")
def picture():
    """(1, 3, 40, 56) smooth random image in [0, 1], with both extremes present."""
    base = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(2))
    image = torch.nn.functional.interpolate(base, size=(40, 56), mode="bilinear")
    image[..., 0, 0], image[..., -1, -1] = 0.0, 1.0
    return image


def tiled(model, images, seed=0, method="sds-", **options):
    options = {"tile": TILE, "overlap": OVERLAP, **options}
    return protect_tiled(
        images,
        METHODS[method](budget=BUDGET),
        model,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )


def at_resolution(model, images, seed=0, short_side=16, **options):
    return protect_at_resolution(
        images,
        METHODS["sds-"](budget=BUDGET),
        model,
        short_side=short_side,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )


@contextlib.contextmanager
def encoder_input_sizes(model):
    """Collects (H, W) of every input the VAE encoder sees inside the block."""
    sizes = []
    handle = model.vae.encoder.register_forward_pre_hook(
        lambda module, args: sizes.append(tuple(args[0].shape[-2:]))
    )
    try:
        yield sizes
    finally:
        handle.remove()


def _relative(core, box):
    return type(core)(core.top - box.top, core.left - box.left, core.height, core.width)


# The tile grid.


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_tile_grid_covers_every_pixel_inside_the_image(height, width, tile, overlap):
    covered = torch.zeros(height, width, dtype=torch.int64)
    for box in tile_grid(height, width, tile, overlap):
        assert box.top >= 0 and box.left >= 0
        assert box.top + box.height <= height and box.left + box.width <= width
        assert (box.height, box.width) == (min(tile, height), min(tile, width))
        covered[box.slices] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_tile_starts_overlap_as_asked_and_end_flush(height, width, tile, overlap):
    for length in (height, width):
        starts = tile_starts(length, tile, overlap)
        side = min(tile, length)
        assert starts[0] == 0 and starts[-1] + side == length
        shared = [previous + side - following for previous, following in pairwise(starts)]
        assert all(pixels >= overlap for pixels in shared), shared
        # No more tiles than needed: one fewer could not keep the overlaps.
        assert len(starts) == 1 or (len(starts) - 2) * (tile - overlap) + tile < length


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), GRIDS)
def test_cores_partition_the_image_inside_their_tiles_with_context(height, width, tile, overlap):
    owners = torch.zeros(height, width, dtype=torch.int64)
    boxes, cores = tile_grid(height, width, tile, overlap), tile_cores(height, width, tile, overlap)
    assert len(boxes) == len(cores)
    for box, core in zip(boxes, cores, strict=True):
        owners[core.slices] += 1
        # Distance from the core to each tile border that is not the image's border.
        margins = {
            "top": (core.top - box.top, box.top > 0),
            "left": (core.left - box.left, box.left > 0),
            "bottom": (
                box.top + box.height - core.top - core.height,
                box.top + box.height < height,
            ),
            "right": (box.left + box.width - core.left - core.width, box.left + box.width < width),
        }
        for side, (margin, inner) in margins.items():
            assert margin >= 0, f"{side}: core {core} leaves its tile {box}"
            assert not inner or margin >= overlap // 2, f"{side}: core {core} of {box}"
    assert torch.equal(owners, torch.ones_like(owners)), "every pixel belongs to exactly one core"


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (16, 16), (16, -1), (16, 2.0)])
def test_bad_tiling_is_refused_with_the_value(tile, overlap):
    with pytest.raises(ValueError, match=repr(overlap) if tile else "tile"):
        tile_grid(40, 56, tile, overlap)


def test_tile_must_be_a_multiple_of_the_size_multiple(tiny_model, picture):
    factor = tiny_model.size_multiple
    with pytest.raises(ValueError, match=f"size multiple {factor}"):
        tiled(tiny_model, picture, tile=TILE + 1)


# Tiled protection.


def test_tiled_budget_holds_on_every_pixel_also_in_8_bits(tiny_model, picture):
    protected = tiled(tiny_model, picture)
    assert protected.shape == picture.shape and protected.dtype == picture.dtype
    assert protected.min() >= 0 and protected.max() <= 1
    change = (protected - picture).abs()
    assert change.max() <= BUDGET.eps + 1e-6
    assert change.max() >= BUDGET.eps - 1e-6, "the test must reach the ball's edge to mean much"
    saved = quantise_within_budget(protected, picture, BUDGET.eps)
    assert (saved.double() / 255 - picture.double()).abs().max() <= BUDGET.eps + 1e-6


def test_every_core_is_protected(tiny_model, picture):
    changed = (tiled(tiny_model, picture) != picture).any(dim=1)[0]
    for core in tile_cores(*picture.shape[-2:], TILE, OVERLAP):
        assert changed[core.slices].any(), f"core {core} left clean"


def test_each_tile_changes_only_its_core_in_the_context_of_the_tiles_before(tiny_model, picture):
    """What the encoder sees of a tile outside its core: earlier cores final, later ones clean."""
    inputs = []
    handle = tiny_model.vae.encoder.register_forward_pre_hook(
        lambda module, args: inputs.append((args[0].detach() + 1) / 2)
    )
    try:
        protected = tiled(tiny_model, picture)
    finally:
        handle.remove()
    height, width = picture.shape[-2:]
    boxes, cores = tile_grid(height, width, TILE, OVERLAP), tile_cores(height, width, TILE, OVERLAP)
    assert len(inputs) == len(boxes) * BUDGET.steps
    for index, (box, core) in enumerate(zip(boxes, cores, strict=True)):
        # The image as it stands when this tile starts: cores before it protected.
        expected = picture.clone()
        for earlier in cores[:index]:
            expected[..., earlier.slices[0], earlier.slices[1]] = protected[
                ..., earlier.slices[0], earlier.slices[1]
            ]
        outside_core = torch.ones(box.height, box.width, dtype=torch.bool)
        outside_core[_relative(core, box).slices] = False
        for seen in inputs[index * BUDGET.steps : (index + 1) * BUDGET.steps]:
            context = seen[..., outside_core]
            torch.testing.assert_close(
                context, expected[..., box.slices[0], box.slices[1]][..., outside_core]
            )


def test_tiled_same_seed_same_output_input_untouched(tiny_model, picture):
    before = picture.clone()
    first = tiled(tiny_model, picture, seed=5)
    assert torch.equal(picture, before)
    assert torch.equal(first, tiled(tiny_model, picture, seed=5))
    assert not torch.equal(first, tiled(tiny_model, picture, seed=6))


def test_tiled_mask_is_respected(tiny_model, picture):
    mask = torch.zeros(1, 1, *picture.shape[-2:])
    mask[..., 6:30, 10:45] = 1
    protected = tiled(tiny_model, picture, mask=mask)
    outside = mask.expand_as(picture) == 0
    assert torch.equal(protected[outside], picture[outside])
    assert not torch.equal(protected[~outside], picture[~outside])


@pytest.mark.parametrize("size", [(16, 16), (12, 14)])
@pytest.mark.parametrize("method", ["sds-", "advdm"])
def test_one_tile_equals_plain_protect(tiny_model, picture, size, method):
    image = picture[..., : size[0], : size[1]]
    expected = protect(
        image,
        METHODS[method](budget=BUDGET),
        tiny_model,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(tiled(tiny_model, image, method=method), expected)


def test_the_encoder_never_sees_more_than_a_tile(tiny_model, picture):
    with encoder_input_sizes(tiny_model) as sizes:
        tiled(tiny_model, picture)
    assert sizes and max(max(size) for size in sizes) <= TILE


def test_callback_reports_tiles_and_steps(tiny_model, picture):
    calls = []
    tiled(tiny_model, picture, callback=lambda *args: calls.append(args[:4]))
    tiles = len(tile_grid(*picture.shape[-2:], TILE, OVERLAP))
    expected = [
        (tile, tiles, step, BUDGET.steps)
        for tile in range(1, tiles + 1)
        for step in range(1, BUDGET.steps + 1)
    ]
    assert calls == expected


# Working-resolution protection.


def test_working_size_keeps_the_aspect_and_never_enlarges():
    assert working_size(4000, 6000, 512) == (512, 768)
    assert working_size(6000, 4000, 1024) == (1536, 1024)
    assert working_size(300, 200, 512) == (300, 200)
    with pytest.raises(ValueError, match="short_side"):
        working_size(40, 56, 0)


def test_working_resolution_budget_holds_on_every_pixel_also_in_8_bits(tiny_model, picture):
    protected = at_resolution(tiny_model, picture)
    assert protected.shape == picture.shape and protected.dtype == picture.dtype
    assert protected.min() >= 0 and protected.max() <= 1
    change = (protected - picture).abs()
    assert BUDGET.eps - 1e-6 <= change.max() <= BUDGET.eps + 1e-6
    saved = quantise_within_budget(protected, picture, BUDGET.eps)
    assert (saved.double() / 255 - picture.double()).abs().max() <= BUDGET.eps + 1e-6


def test_working_resolution_protects_at_that_resolution(tiny_model, picture):
    with encoder_input_sizes(tiny_model) as sizes:
        at_resolution(tiny_model, picture, short_side=16)
    assert set(sizes) == {(16, 22)}, "40 × 56 at a short side of 16 is 16 × 22"


def test_working_resolution_same_seed_same_output_input_untouched(tiny_model, picture):
    before = picture.clone()
    first = at_resolution(tiny_model, picture, seed=5)
    assert torch.equal(picture, before)
    assert torch.equal(first, at_resolution(tiny_model, picture, seed=5))
    assert not torch.equal(first, at_resolution(tiny_model, picture, seed=6))


def test_working_resolution_mask_is_respected(tiny_model, picture):
    mask = torch.zeros(1, 1, *picture.shape[-2:])
    mask[..., 6:30, 10:45] = 1
    protected = at_resolution(tiny_model, picture, mask=mask)
    outside = mask.expand_as(picture) == 0
    assert torch.equal(protected[outside], picture[outside])
    assert not torch.equal(protected[~outside], picture[~outside])


def test_small_images_are_protected_natively(tiny_model, picture):
    expected = protect(
        picture,
        METHODS["sds-"](budget=BUDGET),
        tiny_model,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(at_resolution(tiny_model, picture, short_side=64), expected)
