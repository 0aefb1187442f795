"""What the page shows beside the files: the pair, the perturbation made visible, the mimicry.

Pure functions on pixels (and one on a model), returning uint8 (H, W, 3) arrays for display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..imagefiles import read_image, to_levels
from ..mimicry.sdedit import sdedit
from ..models import LatentDiffusion


def to_display(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8, rounded the way files are written."""
    return to_levels(pixels.cpu()).permute(1, 2, 0).numpy()


def load_pair(original: Path, protected: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The original as protection saw it and the protected file as a viewer decodes it.

    Returns:
        Both (3, H, W) in [0, 1]: the original with its orientation applied, in RGB.
    """
    return read_image(original).pixels, read_image(protected).pixels


def amplified(original: torch.Tensor, protected: torch.Tensor, eps_255: float) -> np.ndarray:
    """The perturbation stretched so that ±ε fills the range: gray where nothing changed.

    Without amplification a budget of a few levels is invisible, which is the point of it, but
    people want to see where it went.
    """
    gain = 0.5 / max(eps_255 / 255, 1 / 255)
    return to_display((0.5 + gain * (protected - original)).clamp(0, 1))


def amplification(eps_255: float) -> float:
    """How many times ``amplified`` enlarges the perturbation (for the caption)."""
    return 127.5 / max(eps_255, 1)


def mimicry_pair(
    model: LatentDiffusion,
    original: torch.Tensor,
    protected: torch.Tensor,
    *,
    prompt: str,
    strength: float,
    num_inference_steps: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """SDEdit of the original and of the protected image with the same seed: what a mimic gets.

    The same seed draws the same posterior sample and noise for both, so any difference between
    the two results comes from the perturbation.
    """
    edited = [
        sdedit(
            model,
            pixels.unsqueeze(0),
            prompt=prompt,
            strength=strength,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(seed),
        )[0]
        for pixels in (original, protected)
    ]
    return to_display(edited[0]), to_display(edited[1])
