"""The amortised protector beside PGD on the miniature: strength, and CPU time at 512².

Strength, measured as ``bench/step_schedule.py`` measures it, in one run: the six bundled
held-out samples (or ``--validation N`` crops of the miniature's training split that the
protector never trained on) are protected at ε = 16/255 by each protector (``--protectors``)
and by SDS− at the reference 100 × 1/255; SDEdit (strength 0.3, 50 DDIM steps) runs on the clean
and on each protected set with the same SDEdit seed, and the mean squared distance between the
two outputs is divided by the same figure for the equal-budget noise control (uniform random
signs of ε). Higher = stronger protection.

Seeds: a protector is deterministic, so what varies with the seed is what is random — the noise
control's signs, SDEdit's noise, and SDS−'s own draws. Seed s uses s for all three; each row is
the mean over ``--seeds`` seeds with a 95 % Student-t interval, and ``amortised ÷ SDS−`` is the
ratio of the two per seed (same seed, same SDEdit noise), averaged the same way.

Cost: seconds per 512² image on this CPU for one ``protect_amortised`` call of each protector
(its trained weights; the network is fully convolutional), in fp32 and bf16, contiguous and
channels-last, with 1 and 2 torch threads, median of ``--repeats`` runs after one warm-up, with
the load average before and after; FLOPs of one pass from ``FlopCounterMode``.

    python bench/amortised_mini.py --output bench/results/amortised-mini.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import diffusers
import torch
from scipy import stats
from torch.utils.flop_counter import FlopCounterMode

from mimicshield import METHODS, Budget, LatentDiffusion, noise_control, protect
from mimicshield.amortised import protect_amortised
from mimicshield.imagefiles import read_image
from mimicshield.metrics import latent_shift, psnr
from mimicshield.mimicry import sdedit
from mimicshield.models import DEFAULT_PROTECTOR, load_protector

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mimicshield" / "samples"


def main() -> None:
    """Measure strength on the miniature and CPU cost at 512²; print rows, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--protectors",
        default=DEFAULT_PROTECTOR,
        help="comma list of protectors (shipped name or folder), each measured",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eps", type=float, default=16, help="L∞ budget, 0–255 units")
    parser.add_argument("--sds-steps", type=int, default=100, help="SDS− steps of 1/255; 0: none")
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument(
        "--validation",
        type=int,
        default=0,
        help="measure on N validation crops of the miniature's training split instead of the "
        "six held-out samples (for choosing between pilots without touching the samples)",
    )
    parser.add_argument("--resolution", type=int, default=512, help="side timed; 0: no timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per configuration")
    parser.add_argument(
        "--threads", default="1,2", help="torch thread counts to time with (comma list)"
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    diffusers.logging.set_verbosity_error()  # its notice on every dtype change of a network
    names = [name.strip() for name in args.protectors.split(",") if name.strip()]
    networks = {name: load_protector(name) for name in names}
    document: dict[str, object] = {"eps_255": args.eps, "seeds": args.seeds}
    document["strength"] = strength_rows(networks, args)
    if args.resolution:
        document["cpu"] = []
        for threads in (int(count) for count in args.threads.split(",")):
            torch.set_num_threads(threads)
            document["cpu"] += cost_rows(networks, args.resolution, args.repeats)
    if args.output:
        args.output.write_text(json.dumps(document, indent=1) + "\n")


def _images(validation: int) -> tuple[torch.Tensor, str]:
    if not validation:
        paths = sorted(SAMPLES.glob("*.png"))
        return torch.stack([read_image(path).pixels for path in paths]), "six bundled samples"
    from training.protector.data import mini_training_crops  # the repository's training code

    crops = mini_training_crops().validation
    picked = crops[torch.linspace(0, len(crops) - 1, validation).round().long()]
    return picked.float() / 255, f"{validation} validation crops of the miniature's training split"


def strength_rows(networks: dict, args: argparse.Namespace) -> list[dict[str, object]]:
    """Ratio to the noise control per seed for every protector and SDS−, and their quotient."""
    model = LatentDiffusion.from_pretrained("mini", device="cpu", dtype="fp32")
    clean, described = _images(args.validation)
    eps = args.eps / 255
    print(f"{described}, ε = {args.eps:g}/255, SDEdit strength {args.strength}, 50 DDIM steps")

    def mimic(images: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sdedit(model, images, prompt="a photo", strength=args.strength,
                      num_inference_steps=50, generator=generator)  # fmt: skip

    protected: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for name, network in networks.items():
        started = time.perf_counter()
        protected[name] = protect_amortised(clean, network, eps=eps)
        seconds[name] = (time.perf_counter() - started) / len(clean)

    ratios: dict[str, list[float]] = {name: [] for name in [*networks, "sds-"]}
    shifts: dict[str, list[float]] = {name: [] for name in ratios}
    quality: dict[str, list[float]] = {name: [] for name in ratios}
    seconds["sds-"] = 0.0
    for seed in range(args.seeds):
        reference = mimic(clean, seed)
        control = noise_control(clean, eps, torch.Generator().manual_seed(seed))
        control_mse = (mimic(control, seed) - reference).pow(2).mean().item()
        this_seed = dict(protected)
        if args.sds_steps:
            method = METHODS["sds-"](budget=Budget.from_255(args.eps, 1, args.sds_steps))
            started = time.perf_counter()
            this_seed["sds-"] = protect(
                clean, method, model, generator=torch.Generator().manual_seed(seed)
            )
            seconds["sds-"] += (time.perf_counter() - started) / len(clean) / args.seeds
        for name, images in this_seed.items():
            ratios[name].append(
                (mimic(images, seed) - reference).pow(2).mean().item() / control_mse
            )
            shifts[name].append(latent_shift(model, clean, images).latent_linf.mean().item())
            quality[name].append(psnr(images, clean).mean().item())
        print(f"seed {seed}: " + ", ".join(f"{n} ×{r[-1]:.2f}" for n, r in ratios.items() if r),
              flush=True)  # fmt: skip

    rows = []
    for name, values in ratios.items():
        if not values:
            continue
        row = {
            "protector": name,
            "ratio_to_noise": _interval(values),
            "ratio_to_noise_per_seed": [round(value, 3) for value in values],
            "latent_linf": round(statistics.mean(shifts[name]), 4),
            "psnr_db": round(statistics.mean(quality[name]), 2),
            "seconds_per_64px_image": round(seconds[name], 4),
        }
        if name != "sds-" and ratios["sds-"]:
            row["ratio_to_sds_minus"] = _interval(
                [a / b for a, b in zip(values, ratios["sds-"], strict=True)]
            )
        rows.append(row)
        versus = row.get("ratio_to_sds_minus")
        print(f"{name:<24} ×noise {_text(row['ratio_to_noise'])}"
              + (f"  ÷SDS− {_text(versus)}" if versus else "")
              + f"  ‖Δz‖∞ {row['latent_linf']:.3f}  PSNR {row['psnr_db']:.2f} dB"
              f"  {row['seconds_per_64px_image'] * 1000:.1f} ms/64² image", flush=True)  # fmt: skip
    return rows


def cost_rows(networks: dict, resolution: int, repeats: int) -> list[dict[str, object]]:
    """Seconds per (1, 3, R, R) pass, median of ``repeats``, for each dtype and layout."""
    image = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, network in networks.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(image)
        flops = counter.get_total_flops()
        for dtype in (torch.float32, torch.bfloat16):
            for layout in (torch.contiguous_format, torch.channels_last):
                network.to(dtype=dtype, memory_format=layout)
                pixels = image.contiguous(memory_format=layout)
                load_before = os.getloadavg()[0]
                with torch.no_grad():
                    network(pixels)  # warm-up: allocator and oneDNN kernel choice
                    times = []
                    for _ in range(repeats):
                        started = time.perf_counter()
                        protect_amortised(pixels, network, eps=network.trained_eps)
                        times.append(time.perf_counter() - started)
                row = {
                    "protector": name,
                    "resolution": resolution,
                    "dtype": str(dtype).removeprefix("torch."),
                    "channels_last": layout == torch.channels_last,
                    "threads": torch.get_num_threads(),
                    "seconds_median": round(statistics.median(times), 4),
                    "seconds": [round(value, 4) for value in times],
                    "gflop": round(flops / 1e9, 2),
                    "parameters": sum(p.numel() for p in network.parameters()),
                    "load_average_before_after": [round(load_before, 2),
                                                  round(os.getloadavg()[0], 2)],
                }  # fmt: skip
                rows.append(row)
                print(f"{name} {resolution}² {row['dtype']:<8} "
                      f"{'NHWC' if row['channels_last'] else 'NCHW'} {row['threads']} thread(s): "
                      f"{row['seconds_median']:.3f} s (median of {repeats}), {row['gflop']} GFLOP, "
                      f"load {row['load_average_before_after']}", flush=True)  # fmt: skip
        network.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return rows


def _interval(values: list[float]) -> dict[str, float]:
    """Mean and 95 % Student-t interval (n − 1 degrees of freedom) of a few per-seed values."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return {"mean": round(mean, 3), "low": round(mean, 3), "high": round(mean, 3)}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": round(mean, 3), "low": round(mean - half, 3), "high": round(mean + half, 3)}


def _text(estimate: dict[str, float]) -> str:
    return f"{estimate['mean']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]"


if __name__ == "__main__":
    main()
