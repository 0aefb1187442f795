"""Generated inpainting masks: (1, 1, H, W) float, 1 (white) = repaint, 0 (black) = keep.

``border`` is the protocol's mask (DESIGN §4): it keeps the subject in the middle and repaints the
rest. ``center`` repaints the middle instead; ``strokes`` draws seeded random brush strokes, as in
free-form inpainting benchmarks. Every generator has the signature of ``MaskFunction`` so that
``MASKS[name](height, width, generator=...)`` works for all of them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ..tensors import draw_device, rand


class MaskFunction(Protocol):
    """The shared signature of the ``MASKS`` generators; their other settings have defaults."""

    def __call__(
        self, height: int, width: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A (1, 1, height, width) float mask in {0, 1}, 1 = repaint, on the CPU.

        Args:
            height: mask height in pixels, ≥ 1.
            width: mask width in pixels, ≥ 1.
            generator: the randomness of random masks (same seed → same mask); ignored by
                deterministic ones.
        """
        ...


def center_mask(
    height: int,
    width: int,
    *,
    fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Repaint a centred box covering ``fraction`` of each side (half of each side by default).

    ``generator`` is accepted for a uniform signature and not used: the box is deterministic.
    """
    _check_size(height, width)
    _check_fraction(fraction)
    mask = torch.zeros(1, 1, height, width)
    box_h, box_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - box_h) // 2, (width - box_w) // 2
    mask[..., top : top + box_h, left : left + box_w] = 1
    return mask


def border_mask(
    height: int,
    width: int,
    *,
    fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keep a centred box covering ``fraction`` of each side; repaint everything around it."""
    return 1 - center_mask(height, width, fraction=fraction)


def strokes_mask(
    height: int,
    width: int,
    *,
    strokes: int = 4,
    segments: int = 4,
    thickness: float = 0.06,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Repaint ``strokes`` random brush strokes, each a polyline of ``segments`` straight pieces.

    Each stroke starts at a uniform point and turns by a random angle at each vertex; pieces are
    10–30 % of the shorter side long. ``thickness`` is the brush diameter as a fraction of the
    shorter side. Same generator seed → same mask.
    """
    _check_size(height, width)
    if strokes < 1 or segments < 1 or thickness <= 0:
        raise ValueError(
            f"strokes and segments must be >= 1 and thickness > 0, got strokes={strokes}, "
            f"segments={segments}, thickness={thickness}"
        )
    device = draw_device(generator)  # the caller chooses where masks are drawn by its generator
    side = min(height, width)
    radius = max(1.0, thickness * side / 2)  # at least 3 px wide, so strokes stay connected
    rows = torch.arange(height, dtype=torch.float32, device=device).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32, device=device).view(1, -1)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(rand((), generator))

    for _ in range(strokes):
        y, x = uniform(0, height - 1), uniform(0, width - 1)
        angle = uniform(0, 2 * math.pi)
        for _ in range(segments):
            angle += uniform(-math.pi / 2, math.pi / 2)
            length = uniform(0.1, 0.3) * side
            end_y = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
            end_x = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
            mask |= _distance_to_segment(rows, cols, (y, x), (end_y, end_x)) <= radius
            y, x = end_y, end_x
    return mask.float().cpu().view(1, 1, height, width)


#: Mask generators by the name the command line uses.
MASKS: dict[str, MaskFunction] = {
    "center": center_mask,
    "border": border_mask,
    "strokes": strokes_mask,
}


def _distance_to_segment(
    rows: torch.Tensor,
    cols: torch.Tensor,
    start: tuple[float, float],
    end: tuple[float, float],
) -> torch.Tensor:
    """Euclidean distance (H, W) of each pixel centre to the segment from ``start`` to ``end``."""
    dy, dx = end[0] - start[0], end[1] - start[1]
    squared_length = dy * dy + dx * dx
    if squared_length == 0:
        along = torch.zeros_like(rows * cols)
    else:
        along = (((rows - start[0]) * dy + (cols - start[1]) * dx) / squared_length).clamp(0, 1)
    return torch.hypot(rows - (start[0] + along * dy), cols - (start[1] + along * dx))


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {height}×{width} (H×W)")


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
