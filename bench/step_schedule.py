"""Does a shorter PGD schedule protect as well? Measured on a trained model, not assumed.

Fewer steps with a larger step size cost proportionally less time (the CPU goal of issue 4), but
only count if protection is as strong. For each schedule (steps, step size in 0–255 units) and
method, on the bundled held-out samples, this prints and writes:

- ``sdedit_mse``: mean squared distance between SDEdit(protected) and SDEdit(clean), same seed
  (higher = stronger protection), and its ratio to the random-noise control of the same budget;
- ``latent_linf``: mean ‖Δz‖∞ of the encoder's latent;
- ``visible_psnr``: PSNR of the protected image against the clean one.

    python bench/step_schedule.py --model mini --output bench/results/step-schedule-mini.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mimicshield import METHODS, Budget, LatentDiffusion, protect
from mimicshield.io import read_image
from mimicshield.metrics import latent_shift, psnr
from mimicshield.mimicry import sdedit

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--methods", default="sds-,photoguard,advdm")
    parser.add_argument("--schedules", default="100x1,50x2,25x4,10x8", help="STEPSxSTEP_SIZE")
    parser.add_argument("--eps", type=float, default=16)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = LatentDiffusion.from_pretrained(args.model, device="cpu", dtype="fp32")
    clean = torch.stack([read_image(path).pixels for path in sorted(SAMPLES.glob("*.png"))])

    def mimic(images: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return sdedit(model, images, prompt="a photo", strength=args.strength,
                      num_inference_steps=50, generator=generator)  # fmt: skip

    reference = mimic(clean)
    signs = torch.randint(0, 2, clean.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    control = (clean + signs * args.eps / 255).clamp(0, 1)
    control_mse = (mimic(control) - reference).pow(2).mean().item()

    rows = []
    for schedule in args.schedules.split(","):
        steps, step_size = schedule.split("x")
        budget = Budget.from_255(args.eps, float(step_size), int(steps))
        for name in args.methods.split(","):
            started = time.perf_counter()
            protected = protect(clean, METHODS[name](budget=budget), model,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
            seconds = time.perf_counter() - started
            mse = (mimic(protected) - reference).pow(2).mean().item()
            shift = latent_shift(model, clean, protected).latent_linf.mean().item()
            rows.append(
                {
                    "method": name,
                    "steps": int(steps),
                    "step_size_255": float(step_size),
                    "seconds": round(seconds, 2),
                    "sdedit_mse": round(mse, 6),
                    "ratio_to_noise": round(mse / control_mse, 2),
                    "latent_linf": round(shift, 4),
                    "visible_psnr": round(psnr(protected, clean).mean().item(), 2),
                }
            )
            row = rows[-1]
            print(f"{name:<11} {schedule:>6}  {row['seconds']:>7.1f}s  SDEdit MSE {mse:.5f} "
                  f"(×{row['ratio_to_noise']} noise)  ‖Δz‖∞ {row['latent_linf']:.3f}  "
                  f"PSNR {row['visible_psnr']:.2f}", flush=True)  # fmt: skip
    print(f"noise control SDEdit MSE {control_mse:.5f}")
    if args.output:
        document = {"model": args.model, "eps_255": args.eps, "strength": args.strength,
                    "noise_sdedit_mse": control_mse, "rows": rows}  # fmt: skip
        args.output.write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
