"""Do LoRA models trained on protected images stray further from those trained on clean ones?

On the shipped miniature (not Stable Diffusion) and its six sample images: protect the set with
SDS− and with the noise control of the same budget, then, for each seed, train LoRA adapters on
the clean, the SDS− and the noise set with that same seed (same initialisation, same draws) and
sample ``--num-images`` images from each with that seed. The distance of a protected set's
samples from the clean set's samples (pixel mean squared error, per seed and sample: the pairs)
says how far protection pushed the imitator's model; SDS− is compared with the control pair by
pair, with 95 % bootstrap intervals (``mimicshield.evaluation.statistics``).

Run from the repository root: ``python bench/lora_mimicry_mini.py`` (about five minutes on two
CPU cores); README.md holds the table it printed.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from mimicshield import METHODS, Budget, LatentDiffusion, noise_control, protect
from mimicshield.evaluation.statistics import Estimate, bootstrap_mean, paired_difference
from mimicshield.imagefiles import read_image
from mimicshield.mimicry import LORA_PRESETS, sample_lora, train_lora

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"
#: The budget of tests/test_mini.py: 16/255 in 30 steps of 2/255.
BUDGET = Budget.from_255(eps=16, step_size=2, steps=30)


def main() -> None:
    """Parse the options, run the measurement, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (default: 3)")
    parser.add_argument("--num-images", type=int, default=4, help="samples per LoRA (default: 4)")
    parser.add_argument("--train-steps", type=int, default=100, help="LoRA steps (default: 100)")
    # The quick preset's 1e-4 barely moves the miniature in 100 steps; the table's first row
    # shows how far this rate moves it.
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default: 1e-3)")
    parser.add_argument("--num-inference-steps", type=int, default=25, help="(default: 25)")
    args = parser.parse_args()

    model = LatentDiffusion.from_pretrained("mini", device="cpu", dtype="fp32")
    clean = torch.stack([read_image(path).pixels for path in sorted(SAMPLES.glob("*.png"))])
    sets = {
        "sds-": protect(clean, METHODS["sds-"](budget=BUDGET), model, generator=_seeded(0)),
        "noise": noise_control(clean, BUDGET.eps, _seeded(0)),
    }
    config = dataclasses.replace(
        LORA_PRESETS["quick"], steps=args.train_steps, learning_rate=args.learning_rate
    )

    distances: dict[str, list[float]] = {name: [] for name in sets}
    base_distances = []
    for seed in range(args.seeds):
        # Training and sampling each get their own seed, the same for every set: the samples of
        # two sets differ only through what their adapters learned.
        sample = {
            "num_images": args.num_images,
            "height": 64,
            "width": 64,
            "num_inference_steps": args.num_inference_steps,
        }
        trained = train_lora(model, clean, config, generator=_seeded(seed))
        reference = sample_lora(model, trained, **sample, generator=_seeded(1000 + seed))
        for name, images in sets.items():
            weights = train_lora(model, images, config, generator=_seeded(seed))
            generated = sample_lora(model, weights, **sample, generator=_seeded(1000 + seed))
            distances[name] += _mse(generated, reference)
        # How far training moved the model at all: adapters with B = 0 are the base model.
        zero = {key: torch.zeros_like(value) for key, value in trained.state_dict.items()}
        untrained = dataclasses.replace(trained, state_dict=zero)
        base = sample_lora(model, untrained, **sample, generator=_seeded(1000 + seed))
        base_distances += _mse(base, reference)

    print(f"{len(clean)} images, {args.seeds} seeds × {args.num_images} samples, {config}")
    print("| samples of | pixel MSE to the clean-trained LoRA's samples (95 % CI) |")
    print("|---|---|")
    print(f"| the base model (no training) | {_format(bootstrap_mean(base_distances))} |")
    for name, values in distances.items():
        print(f"| LoRA trained on {name} images | {_format(bootstrap_mean(values))} |")
    difference = paired_difference(distances["sds-"], distances["noise"])
    print(f"| sds- − noise, paired | {_format(difference)} |")


def _mse(images: torch.Tensor, references: torch.Tensor) -> list[float]:
    """Per-image pixel mean squared error of (N, 3, H, W) in [0, 1]."""
    return (images - references).pow(2).mean(dim=(1, 2, 3)).tolist()


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _format(estimate: Estimate | None) -> str:
    return f"{estimate.mean:.5f} [{estimate.low:.5f}, {estimate.high:.5f}]" if estimate else "–"


if __name__ == "__main__":
    main()
