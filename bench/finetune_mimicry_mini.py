"""Do models fine-tuned on protected images stray further from those fine-tuned on clean ones?

On the shipped miniature (not Stable Diffusion) and its six sample images: protect the set with
every method of ``mimicshield.METHODS`` and with the noise control, all at one budget (16/255, 30
steps of 2/255, protection seed 0). Then, for each training seed, fine-tune LoRA adapters and a
DreamBooth UNet on the clean set and on every protected set with that same seed (same
initialisation, same draws), and sample ``--num-images`` images from each with one sampling seed.
The pixel mean squared error of a protected set's samples to the clean set's samples, per seed and
sample, says how far protection pushed the imitator's model; each method is compared with the
noise control pair by pair (same seed, same sample). Intervals are 95 % bootstrap intervals that
resample whole training seeds (``mimicshield.evaluation.statistics`` with ``clusters``), because
the samples of one seed share a training run. The base model's samples (no training at all), drawn
with the same sampling seeds, show how far the training itself moves the model.

Each (set, scenario, seed) cell is written to ``--output`` (JSON) as soon as it is done, and a
re-run skips the finished cells, so the run can be stopped and resumed; ``--table`` prints the
table of what the file holds without computing anything.

Run from the repository root: ``python bench/finetune_mimicry_mini.py`` (one core, about 40
minutes); README.md holds the table it printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from mimicshield import METHODS, Budget, LatentDiffusion, noise_control, protect
from mimicshield.evaluation.statistics import Estimate, bootstrap_mean, paired_difference
from mimicshield.imagefiles import read_image
from mimicshield.mimicry import (
    DREAMBOOTH_PRESETS,
    LORA_PRESETS,
    TunedUNet,
    sample_dreambooth,
    sample_lora,
    train_dreambooth,
    train_lora,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "mimicshield" / "samples"
#: The budget of tests/test_mini.py: 16/255 in 30 steps of 2/255.
BUDGET = Budget.from_255(eps=16, step_size=2, steps=30)
#: The sets trained on besides the clean one: every method, then the equal-budget control.
SETS = (*METHODS, "noise")
SCENARIO_NAMES = {"lora": "LoRA", "dreambooth": "DreamBooth"}


def main() -> None:
    """Parse the options, run the cells still missing from the output file, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="training seeds (default: 8)")
    parser.add_argument("--num-images", type=int, default=4, help="samples per model (default: 4)")
    parser.add_argument("--train-steps", type=int, default=100, help="steps of both (default: 100)")
    # The quick presets' rates (LoRA 1e-4, DreamBooth 5e-6) barely move the miniature in 100
    # steps; the table's base-model row shows how far these rates move it.
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3, help="(default: 1e-3)")
    parser.add_argument(
        "--dreambooth-learning-rate", type=float, default=2e-5, help="(default: 2e-5)"
    )
    parser.add_argument("--num-inference-steps", type=int, default=25, help="(default: 25)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results" / "finetune-mimicry-mini.json",
        help="results file, read to resume (default: bench/results/finetune-mimicry-mini.json)",
    )
    parser.add_argument("--table", action="store_true", help="only print the file's table")
    args = parser.parse_args()

    settings = {
        "model": "mini",
        "images": sorted(path.name for path in SAMPLES.glob("*.png")),
        "budget_255": {"eps": 16, "step_size": 2, "steps": 30},
        "protection_seed": 0,
        "seeds": args.seeds,
        "num_images": args.num_images,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": 7.5,
        "lora": {"rank": 4, "steps": args.train_steps, "learning_rate": args.lora_learning_rate},
        "dreambooth": {
            "steps": args.train_steps,
            "learning_rate": args.dreambooth_learning_rate,
            "num_class_images": 0,
        },
        "torch_threads": 1,
    }
    results = _load(args.output, settings)
    if not args.table:
        torch.set_num_threads(1)
        _run(results, args.output)
    print(_table(results))


# -------------------------------------------------------------------------------------- running


def _run(results: dict, output: Path) -> None:
    """Compute every missing cell, seed by seed, writing the file after each one."""
    settings = results["settings"]
    model = LatentDiffusion.from_pretrained("mini", device="cpu", dtype="fp32")
    clean = torch.stack([read_image(SAMPLES / name).pixels for name in settings["images"]])
    protected: dict[str, torch.Tensor] = {}  # protected lazily: a resumed run may need none
    sampling = {
        "num_images": settings["num_images"],
        "height": clean.shape[-2],
        "width": clean.shape[-1],
        "num_inference_steps": settings["num_inference_steps"],
        "guidance_scale": settings["guidance_scale"],
    }
    lora_config = dataclasses.replace(
        LORA_PRESETS["quick"],
        rank=settings["lora"]["rank"],
        steps=settings["lora"]["steps"],
        learning_rate=settings["lora"]["learning_rate"],
    )
    dreambooth_config = dataclasses.replace(
        DREAMBOOTH_PRESETS["quick"],
        steps=settings["dreambooth"]["steps"],
        learning_rate=settings["dreambooth"]["learning_rate"],
    )

    def train_and_sample(scenario: str, images: torch.Tensor, seed: int) -> torch.Tensor:
        # Training and sampling each get their own seed, the same for every set: the samples
        # of two sets differ only through what their fine-tuning learned.
        if scenario == "lora":
            weights = train_lora(model, images, lora_config, generator=_seeded(seed))
            return sample_lora(model, weights, **sampling, generator=_seeded(1000 + seed))
        tuned = train_dreambooth(model, images, dreambooth_config, generator=_seeded(seed))
        return sample_dreambooth(model, tuned, **sampling, generator=_seeded(1000 + seed))

    def base_samples(seed: int) -> torch.Tensor:
        # The untouched model's own UNet, sampled exactly as the fine-tuned ones are.
        untouched = TunedUNet(dreambooth_config, model.unet)
        return sample_dreambooth(model, untouched, **sampling, generator=_seeded(1000 + seed))

    for seed in range(settings["seeds"]):
        for scenario in SCENARIO_NAMES:
            missing = [
                name
                for name in ("base", *SETS)
                if _key(scenario, name, seed) not in results["cells"]
            ]
            if not missing:
                continue
            start = time.perf_counter()
            reference = train_and_sample(scenario, clean, seed)
            _check_reference(results, f"{scenario}/{seed}", reference, time.perf_counter() - start)
            for name in missing:
                start = time.perf_counter()
                if name == "base":
                    samples = base_samples(seed)
                else:
                    if name not in protected:
                        protected[name] = _protect(name, clean, model, results)
                    samples = train_and_sample(scenario, protected[name], seed)
                results["cells"][_key(scenario, name, seed)] = {
                    "mse": (samples - reference).pow(2).mean(dim=(1, 2, 3)).tolist(),
                    "seconds": round(time.perf_counter() - start, 2),
                }
                _save(results, output)
                print(f"{scenario} seed {seed} {name}: done", flush=True)


def _protect(name: str, clean: torch.Tensor, model: LatentDiffusion, results: dict) -> torch.Tensor:
    """The six images protected with method ``name`` (or the noise control), seed 0."""
    start = time.perf_counter()
    if name == "noise":
        images = noise_control(clean, BUDGET.eps, _seeded(0))
    else:
        images = protect(clean, METHODS[name](budget=BUDGET), model, generator=_seeded(0))
    results["protection_seconds"][name] = round(time.perf_counter() - start, 2)
    return images


def _check_reference(results: dict, key: str, reference: torch.Tensor, seconds: float) -> None:
    """Record the clean-trained samples' digest, or check that a resumed run reproduced them."""
    digest = hashlib.sha256(reference.numpy().tobytes()).hexdigest()
    stored = results["references"].setdefault(key, {"sha256": digest, "seconds": round(seconds, 2)})
    if stored["sha256"] != digest:
        raise SystemExit(
            f"the clean-trained samples of {key} differ from those the finished cells were "
            "measured against (another machine or library version?); start a new --output"
        )


def _key(scenario: str, name: str, seed: int) -> str:
    return f"{scenario}/{name}/{seed}"


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _load(output: Path, settings: dict) -> dict:
    """The results so far (empty for a new file); refuse a file made with other settings."""
    if not output.exists():
        return {"settings": settings, "cells": {}, "references": {}, "protection_seconds": {}}
    results = json.loads(output.read_text())
    if results["settings"] != settings:
        raise SystemExit(
            f"{output} holds results of other settings ({results['settings']}); "
            "pass the same options or another --output"
        )
    return results


def _save(results: dict, output: Path) -> None:
    """Write the file whole, then rename it over the old one: a stop never leaves half a file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(partial, output)


# ---------------------------------------------------------------------------------------- table


def _table(results: dict) -> str:
    """The Markdown table of what ``results`` holds; seeds where a cell is missing are left out."""
    settings, cells = results["settings"], results["cells"]
    head = ["samples of"]
    for label in SCENARIO_NAMES.values():
        head += [f"{label}: MSE to clean-trained", f"{label}: − noise, paired"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    seeds_used = {}
    for name in ("base", *SETS):
        row = ["the base model (no training)" if name == "base" else f"trained on {name}"]
        for scenario in SCENARIO_NAMES:
            seeds = [
                seed
                for seed in range(settings["seeds"])
                if all(_key(scenario, other, seed) in cells for other in ("base", *SETS))
            ]
            seeds_used[scenario] = len(seeds)
            values, controls, clusters = [], [], []
            for seed in seeds:
                mse = cells[_key(scenario, name, seed)]["mse"]
                values += mse
                controls += cells[_key(scenario, "noise", seed)]["mse"]
                clusters += [seed] * len(mse)
            row.append(_format(bootstrap_mean(values, clusters=clusters)))
            paired = name not in ("base", "noise")
            difference = paired_difference(values, controls, clusters=clusters) if paired else None
            row.append(_format(difference, marker=True))
        lines.append("| " + " | ".join(row) + " |")
    seconds = sum(cell["seconds"] for cell in cells.values())
    seconds += sum(ref["seconds"] for ref in results["references"].values())
    seconds += sum(results["protection_seconds"].values())
    used = ", ".join(f"{SCENARIO_NAMES[s]} {n}" for s, n in seeds_used.items())
    lines.append(
        f"\nComplete seeds: {used} of {settings['seeds']}, {settings['num_images']} samples "
        f"each; compute time {seconds / 60:.1f} min; settings {json.dumps(settings)}"
    )
    return "\n".join(lines)


def _format(estimate: Estimate | None, *, marker: bool = False) -> str:
    if estimate is None:
        return "–"
    text = f"{estimate.mean:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}]"
    if not marker:
        return text.replace("+", "")
    return text + (" ≈" if estimate.inconclusive else "")


if __name__ == "__main__":
    main()
