"""Protection strength on a trained miniature, as the benches measure it (shared by the scripts).

Strength of a protected batch = the mean squared distance between SDEdit(protected) and
SDEdit(clean) (strength 0.3, 50 DDIM steps, the same SDEdit seed for both), as a multiple of the
same distance for the equal-budget noise control (``mimicshield.noise_control``: every channel
of every pixel moved by ±ε at random). Higher = stronger; 1 = no better than noise. The images
are the six bundled held-out samples (``src/mimicshield/samples``, never seen in training); the
mimicry and the measurements always run in fp32, whatever precision protects.

    from strength import SDEditProbe
    probe = SDEditProbe.load("mini", eps_255=16)
    per_image = probe.distances(protected)  # (6,) squared distances, one per image
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mimicshield import LatentDiffusion, noise_control
from mimicshield.imagefiles import read_image
from mimicshield.mimicry import sdedit

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"


def held_out_samples() -> torch.Tensor:
    """(6, 3, 64, 64) in [0, 1]: the bundled samples, in file-name order."""
    return torch.stack([read_image(path).pixels for path in sorted(SAMPLES.glob("*.png"))])


@dataclass
class SDEditProbe:
    """SDEdit of the clean samples computed once; measures protected copies against it.

    Attributes:
        model: the fp32 model that mimics and measures.
        clean: (N, 3, H, W) the held-out samples.
        eps: the budget of the noise control, on the [0, 1] scale.
        strength: SDEdit strength (0.3).
        num_inference_steps: DDIM steps of the full SDEdit schedule (50).
        reference: SDEdit(clean), (N, 3, H, W).
    """

    model: LatentDiffusion
    clean: torch.Tensor
    eps: float
    strength: float = 0.3
    num_inference_steps: int = 50
    reference: torch.Tensor | None = None

    @classmethod
    def load(cls, model_name: str = "mini", *, eps_255: float = 16, strength: float = 0.3):
        """The probe for ``model_name`` loaded in fp32 on the CPU, with SDEdit(clean) done."""
        model = LatentDiffusion.from_pretrained(model_name, device="cpu", dtype="fp32")
        probe = cls(model, held_out_samples(), eps_255 / 255, strength)
        probe.reference = probe.mimic(probe.clean)
        return probe

    def mimic(self, images: torch.Tensor) -> torch.Tensor:
        """SDEdit with the protocol's prompt, strength, steps and fixed seed 0."""
        return sdedit(
            self.model,
            images,
            prompt="a photo",
            strength=self.strength,
            num_inference_steps=self.num_inference_steps,
            generator=torch.Generator().manual_seed(0),
        )

    def distances(self, protected: torch.Tensor) -> list[float]:
        """Per image: mean over pixels of (SDEdit(protected) − SDEdit(clean))²."""
        squared = (self.mimic(protected) - self.reference).pow(2)
        return squared.flatten(1).mean(1).tolist()

    def control(self, seed: int = 0) -> torch.Tensor:
        """The noise control of the samples for one seed (uniform random signs of ±ε)."""
        return noise_control(self.clean, self.eps, torch.Generator().manual_seed(seed))


def ratio_of_means(distances: np.ndarray, control: np.ndarray) -> float:
    """Mean distance of the protected images over the noise control's mean (same images).

    Args:
        distances: (seeds, images) of one candidate.
        control: (control seeds, images) of the noise control.
    """
    return float(distances.mean() / control.mean())


def bootstrap_ratio(
    distances: np.ndarray,
    control: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval over seeds × images of ``ratio_of_means``.

    Each resample draws the images with replacement and, independently, the protection seeds
    with replacement (and the control's seeds); the ratio is recomputed on the drawn cells. With
    ``reference`` (seeds, images) of another candidate, the interval is of the candidate's
    ratio over the reference's, drawn on the same images and seed positions (a paired
    comparison: the images' own easiness cancels).

    Args:
        distances: (seeds, images).
        control: (control seeds, images).
        reference: (seeds, images) or None.
        resamples: bootstrap draws.
        seed: of the resampling, so a table is reproducible.

    Returns:
        (low, high): the 2.5th and 97.5th percentiles.
    """
    generator = np.random.default_rng(seed)
    seeds, images = distances.shape
    values = np.empty(resamples)
    for draw in range(resamples):
        image_rows = generator.integers(0, images, images)
        seed_rows = generator.integers(0, seeds, seeds)
        control_rows = generator.integers(0, control.shape[0], control.shape[0])
        cells = distances[np.ix_(seed_rows, image_rows)]
        if reference is None:
            values[draw] = cells.mean() / control[np.ix_(control_rows, image_rows)].mean()
        else:  # the control divides both ratios, so it cancels
            values[draw] = cells.mean() / reference[np.ix_(seed_rows, image_rows)].mean()
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
