"""Large images: tiled vs whole-image vs working-resolution protection, on a trained model.

For each size (whole-image protection must still fit, to compare against it) the bundled held-out
samples are enlarged bicubically to SIZE² and protected with SDS− (same budget and steps for all):

- ``whole``: ``protect`` on the whole image;
- ``tiled-O``: ``protect_tiled`` with ``--tile`` and overlap O for each of ``--overlaps``;
- ``working-S``: ``protect_at_resolution`` at short side S (``--short-side``);
- ``noise``: the equal-budget control (uniform random signs of the full budget).

Every result is rounded to 8 bits within the budget first (what a user posts), then measured:

- ``seconds_per_image``: protection wall time / batch;
- ``sdedit_ratio``: mean squared distance of SDEdit(protected) to SDEdit(clean) at native size, as
  a multiple of the same for the noise control (per image; higher = stronger);
- ``latent_l2_ratio``, ``latent_linf_ratio``: the encoder's ‖Δz‖₂ and ‖Δz‖∞ at native size, as
  multiples of the noise control's;
- ``downscaled_sdedit_ratio``: the same SDEdit ratio after shrinking to ``--downscale``² with
  antialiased *bilinear* (as fine-tuning pipelines' PIL / torchvision resize; not the bicubic
  kernel protect_at_resolution shrinks with), SDEdit run at that size;
- ``seam_ratio``: mean |∇δ|² (δ = protected − clean, squared forward differences summed over
  channels) on pixels within 2 px of a line where δ may change source, over all other pixels
  (1.0 = no seam). For tiled results the lines are the core boundaries (where the tile that
  changes a pixel switches) and, as ``tile_border_ratio``, the tile borders; ``whole`` and
  ``noise`` are measured on the core boundaries of the first overlap as a reference.

and, independent of the model, how much of a ±ε sign pattern survives being enlarged by
protect_at_resolution's kernel and shrunk again (``resampling``, cosine similarity).

    python bench/tiling.py --sizes 128 --output bench/results/tiling-mini-128.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from mimicshield import METHODS, Budget, LatentDiffusion, noise_control, protect
from mimicshield.budget import quantise_within_budget
from mimicshield.imagefiles import read_image
from mimicshield.metrics import latent_shift, psnr
from mimicshield.mimicry import sdedit
from mimicshield.resolution import protect_at_resolution
from mimicshield.tiling import Box, protect_tiled, tile_cores, tile_grid

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"
BAND = 2  # pixels on either side of a seam line counted as "at the seam"


def main() -> None:
    """Parse the options, run every size and way, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--sizes", default="128,192", help="square sizes in pixels, e.g. 128,192")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlaps", default="16,32")
    parser.add_argument("--short-side", type=int, default=64)
    parser.add_argument("--downscale", type=int, default=64, help="size of the downscaled check")
    parser.add_argument("--eps", type=float, default=16, help="L∞ budget in 0–255 units")
    parser.add_argument("--step-size", type=float, default=2, help="in 0–255 units")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="protection and SDEdit seed")
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--picture", type=Path, help="PNG of the amplified δ, tiled | whole")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = LatentDiffusion.from_pretrained(args.model, device="cpu", dtype="fp32")
    method = METHODS["sds-"](budget=Budget.from_255(args.eps, args.step_size, args.steps))
    samples = torch.stack([read_image(path).pixels for path in sorted(SAMPLES.glob("*.png"))])
    report = {"settings": vars(args) | {"picture": str(args.picture), "output": str(args.output)}}
    report["resampling"] = resampling_round_trip(args.eps / 255)
    for size in map(int, args.sizes.split(",")):
        report[str(size)] = measure_size(model, method, samples, size, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


def measure_size(model, method, samples, size: int, args) -> dict[str, dict]:
    """Protect the enlarged samples every way, then measure each result against the control."""
    clean = F.interpolate(samples, size=(size, size), mode="bicubic").clamp(0, 1)
    overlaps = [int(overlap) for overlap in args.overlaps.split(",")]

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    ways: dict[str, Callable[[], torch.Tensor]] = {
        "noise": lambda: noise_control(clean, method.budget.eps, seeded()),
        "whole": lambda: protect(clean, method, model, generator=seeded()),
        f"working-{args.short_side}": lambda: protect_at_resolution(
            clean, method, model, short_side=args.short_side, generator=seeded()
        ),
    }
    for overlap in overlaps:
        ways[f"tiled-{overlap}"] = lambda overlap=overlap: protect_tiled(
            clean, method, model, tile=args.tile, overlap=overlap, generator=seeded()
        )

    protected, seconds = {}, {}
    for name, run in ways.items():
        start = time.perf_counter()
        result = run()
        seconds[name] = (time.perf_counter() - start) / len(clean)
        protected[name] = quantise_within_budget(result, clean, method.budget.eps).float() / 255
    if args.picture and size == max(map(int, args.sizes.split(","))):
        tiled = protected[f"tiled-{overlaps[0]}"]
        save_picture(args.picture, tiled - clean, protected["whole"] - clean, method.budget.eps)

    def mimic(images: torch.Tensor) -> torch.Tensor:
        return sdedit(model, images, prompt="a photo", strength=args.strength,
                      num_inference_steps=30, generator=seeded())  # fmt: skip

    small = (args.downscale, args.downscale)
    shrink = lambda images: F.interpolate(  # noqa: E731
        images, size=small, mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)
    reference, small_reference = mimic(clean), mimic(shrink(clean))
    distance = {name: per_image_mse(mimic(images), reference) for name, images in protected.items()}
    small_distance = {
        name: per_image_mse(mimic(shrink(images)), small_reference)
        for name, images in protected.items()
    }
    shifts = {name: latent_shift(model, clean, images) for name, images in protected.items()}

    rows = {}
    first_cores = tile_cores(size, size, args.tile, overlaps[0])
    for name, images in protected.items():
        delta = images - clean
        overlap = int(name.split("-")[1]) if name.startswith("tiled") else overlaps[0]
        cores = (
            tile_cores(size, size, args.tile, overlap) if name.startswith("tiled") else first_cores
        )
        row = {
            "seconds_per_image": seconds[name],
            "linf_255": float((delta.abs().max() * 255).round()),
            "psnr_db": summary(psnr(images, clean)),
            "sdedit_ratio": summary(distance[name] / distance["noise"]),
            "latent_l2_ratio": summary(shifts[name].latent_l2 / shifts["noise"].latent_l2),
            "latent_linf_ratio": summary(shifts[name].latent_linf / shifts["noise"].latent_linf),
            "downscaled_sdedit_ratio": summary(small_distance[name] / small_distance["noise"]),
            "seam_ratio": seam_ratio(delta, core_lines(cores, size)),
        }
        if name.startswith("tiled"):
            row["tiles"] = len(cores)
            row["tile_border_ratio"] = seam_ratio(
                delta, border_lines(tile_grid(size, size, args.tile, overlap), size)
            )
        rows[name] = row  # fmt: skip
    return rows


def per_image_mse(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference per image."""
    return (images.double() - reference.double()).pow(2).flatten(1).mean(1)


def summary(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation, min and max of per-image values."""
    values = values.double().flatten()
    return {"mean": values.mean().item(), "std": values.std().item(),
            "min": values.min().item(), "max": values.max().item()}  # fmt: skip


def core_lines(cores: list[Box], size: int) -> tuple[set[int], set[int]]:
    """(rows, columns) where a core starts inside the image: the pixel after a seam line."""
    return ({c.top for c in cores if c.top > 0}, {c.left for c in cores if c.left > 0})


def border_lines(boxes: list[Box], size: int) -> tuple[set[int], set[int]]:
    """(rows, columns) just past each tile edge that lies inside the image."""
    rows = {b.top for b in boxes if b.top > 0} | {
        b.top + b.height for b in boxes if b.top + b.height < size
    }
    columns = {b.left for b in boxes if b.left > 0} | {
        b.left + b.width for b in boxes if b.left + b.width < size
    }
    return rows, columns  # fmt: skip


def seam_ratio(delta: torch.Tensor, lines: tuple[set[int], set[int]]) -> float:
    """Mean |∇δ|² within ``BAND`` px of the lines over the mean elsewhere (1.0 = no seam).

    Args:
        delta: (B, 3, H, W) perturbation.
        lines: (rows, columns): a line at row r lies between pixel rows r − 1 and r.
    """
    energy = gradient_energy(delta)  # (H, W)
    near = torch.zeros_like(energy, dtype=torch.bool)
    rows, columns = lines
    for row in rows:
        near[max(0, row - BAND) : row + BAND, :] = True
    for column in columns:
        near[:, max(0, column - BAND) : column + BAND] = True
    return (energy[near].mean() / energy[~near].mean()).item()


def gradient_energy(delta: torch.Tensor) -> torch.Tensor:
    """Squared forward differences of δ: (H, W), summed over channels, averaged over the batch.

    Each pixel is compared with its right and lower neighbour.
    """
    dx = F.pad((delta[..., :, 1:] - delta[..., :, :-1]).pow(2), (0, 1, 0, 0))
    dy = F.pad((delta[..., 1:, :] - delta[..., :-1, :]).pow(2), (0, 0, 0, 1))
    return (dx + dy).sum(1).mean(0)


def save_picture(path: Path, tiled: torch.Tensor, whole: torch.Tensor, eps: float) -> None:
    """The first image's δ, tiled | whole, mapped from [−ε, ε] to [0, 255] (amplified 255 / 2ε)."""
    pair = torch.cat([tiled[0], torch.ones(3, tiled.shape[-2], 4) * eps, whole[0]], dim=-1)
    pixels = ((pair / eps + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)


def resampling_round_trip(eps: float) -> dict[str, float]:
    """Cosine between a 64² ±ε sign pattern and itself enlarged (clipped to ±ε), then shrunk."""
    signs = torch.randint(0, 2, (1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    delta = (signs * 2 - 1).float() * eps
    results = {}
    for up in ("bicubic", "bilinear"):
        for down in ("bicubic", "bilinear"):
            for size in (128, 192, 512):
                large = F.interpolate(delta, size=(size, size), mode=up).clamp(-eps, eps)
                back = F.interpolate(large, size=(64, 64), mode=down, antialias=True)
                cosine = F.cosine_similarity(back.flatten(), delta.flatten(), dim=0)
                results[f"up {up}, down {down}, {size}"] = round(cosine.item(), 4)
    return results


if __name__ == "__main__":
    main()
