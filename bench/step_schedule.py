"""Does a shorter PGD schedule protect as well? Measured on a trained model, not assumed.

Fewer steps with a larger step size cost proportionally less time (the CPU goal of issue 4), but
only count if protection is as strong. For each schedule (steps, step size in 0–255 units and,
optionally, noise draws per step K: ``50x2x2``) and method, on the bundled held-out samples, this
prints and writes:

- ``ratio_to_noise``: mean squared distance between SDEdit(protected) and SDEdit(clean), same
  SDEdit seed, as a multiple of the same figure for uniform random-sign noise of the full budget
  (higher = stronger protection); mean and standard deviation over ``--seeds`` protection seeds,
  since differences of a few percent are within one seed's luck;
- ``latent_linf``: mean ‖Δz‖∞ of the encoder's latent;
- ``visible_psnr``: PSNR of the protected image against the clean one.

    python bench/step_schedule.py --model mini --output bench/results/step-schedule-mini.json

(bench/README.md lists the other runs: bf16 networks, several noise draws per step.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from strength import SDEditProbe

from mimicshield import METHODS, Budget, LatentDiffusion, protect
from mimicshield.metrics import latent_shift, psnr


def main() -> None:
    """Protect, mimic and measure the samples per schedule, method and seed; print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--methods", default="sds-,photoguard,advdm")
    parser.add_argument(
        "--schedules",
        default="100x1,80x1,50x2,25x4,10x8",
        help="STEPSxSTEP_SIZE[xNOISE_SAMPLES],...",
    )
    parser.add_argument("--eps", type=float, default=16)
    parser.add_argument(
        "--dtype", default="fp32", help="precision of the protecting networks (mimicry stays fp32)"
    )
    parser.add_argument("--seeds", type=int, default=5, help="protection seeds 0..N−1 averaged")
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    # The mimicry and the measurements always run in fp32, so precisions are compared fairly.
    probe = SDEditProbe.load(args.model, eps_255=args.eps, strength=args.strength)
    protector = LatentDiffusion.from_pretrained(args.model, device="cpu", dtype=args.dtype)
    control_mse = sum(probe.distances(probe.control(seed=0))) / len(probe.clean)

    rows = []
    for schedule in args.schedules.split(","):
        steps, step_size, samples = (schedule.split("x") + ["1"])[:3]
        budget = Budget.from_255(args.eps, float(step_size), int(steps))
        for name in args.methods.split(","):
            method = METHODS[name](budget=budget, noise_samples=int(samples))
            runs = [_measure(method, protector, probe, seed) for seed in range(args.seeds)]
            ratios = torch.tensor([run["sdedit_mse"] / control_mse for run in runs])
            row = {
                "method": name,
                "steps": int(steps),
                "step_size_255": float(step_size),
                "noise_samples": int(samples),
                "seeds": args.seeds,
                "seconds": round(sum(run["seconds"] for run in runs) / len(runs), 2),
                "ratio_to_noise": round(ratios.mean().item(), 2),
                "ratio_to_noise_std": round(ratios.std().item(), 2) if len(runs) > 1 else 0.0,
                "ratio_to_noise_per_seed": [round(ratio, 2) for ratio in ratios.tolist()],
                "latent_linf": round(sum(run["latent_linf"] for run in runs) / len(runs), 4),
                "visible_psnr": round(sum(run["visible_psnr"] for run in runs) / len(runs), 2),
            }
            rows.append(row)
            print(f"{name:<11} {schedule:>8}  {row['seconds']:>6.1f}s/seed  "
                  f"×{row['ratio_to_noise']:.2f} ± {row['ratio_to_noise_std']:.2f} noise  "
                  f"‖Δz‖∞ {row['latent_linf']:.3f}  PSNR {row['visible_psnr']:.2f}",
                  flush=True)  # fmt: skip
    print(f"noise control SDEdit MSE {control_mse:.5f}")
    if args.output:
        document = {"model": args.model, "dtype": args.dtype, "eps_255": args.eps,
                    "strength": args.strength, "noise_sdedit_mse": control_mse,
                    "rows": rows}  # fmt: skip
        args.output.write_text(json.dumps(document, indent=1))


def _measure(method, protector, probe: SDEditProbe, seed: int) -> dict[str, float]:
    """Protect the samples with ``protector`` and one seed; measure with the probe's fp32 model."""
    started = time.perf_counter()
    clean = probe.clean
    protected = protect(clean, method, protector, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "sdedit_mse": sum(probe.distances(protected)) / len(clean),
        "latent_linf": latent_shift(probe.model, clean, protected).latent_linf.mean().item(),
        "visible_psnr": psnr(protected, clean).mean().item(),
    }


if __name__ == "__main__":
    main()
