"""The README's table of model families: what each supports, what a step costs, what it needs.

Joins three sources, so that the table is one command away from its figures:

- ``bench/families.py``'s counts (the newest ``results/families-meta-*.json``): parameters, bf16
  weights, TFLOP per SDS / AdvDM / PhotoGuard step at the family's native resolution, and the
  activations autograd saves (counted on the meta device);
- its CPU timings (the newest ``results/families-cpu-*.json``): seconds per SDS step;
- the memory planner's prediction (``mimicshield.runtime.memory.estimate_bytes``) for one image at
  native resolution in bf16, for an SDS step and an AdvDM step, computed here from the adapter's
  own full-size random model built on the meta device (nothing allocated).

    python bench/family_table.py            # ≈ 1 min (builds four full-size models on meta)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mimicshield.models import LatentDiffusion
from mimicshield.runtime.memory import estimate_bytes, size_of

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30

#: bench/families.py's family key → (RANDOM_MODELS name, label, what the family supports).
FAMILIES = {
    "sd15": (
        "sd15-random",
        "SD 1.x/2.x (SD 1.5, 512²)",
        "every method; SDEdit, inpainting (9-channel inpainting models too), textual inversion, "
        "LoRA, DreamBooth; ε and v prediction; single files v1/v2",
    ),
    "sdxl": (
        "sdxl-random",
        "SDXL (base 1.0, 1024²)",
        "every method; SDEdit, inpainting, textual inversion (both encoders), LoRA, DreamBooth; "
        "fp16 VAE kept in fp32; single files",
    ),
    "sd35-medium": (
        "sd35-medium-random",
        "SD3/3.5 (3.5 medium, 1024²)",
        "every method (flow matching); SDEdit, inpainting, LoRA, DreamBooth; T5 optional; "
        "single files; no textual inversion in diffusers",
    ),
    "flux-dev": (
        "flux-dev-random",
        "FLUX.1 (dev, 1024²)",
        "every method (flow matching, packed latents, embedded guidance 3.5); SDEdit, "
        "inpainting, LoRA, DreamBooth; single files (dev, schnell); no textual inversion",
    ),
}


def newest(pattern: str) -> dict:
    """The newest results file matching ``pattern``, parsed; rows by family."""
    path = max(RESULTS.glob(pattern))
    document = json.loads(path.read_text())
    return {"path": path.name, "rows": {row["family"]: row for row in document["rows"]}}


def planner_gib(name: str, resolution: int) -> tuple[float, float]:
    """The planner's peak for one image in bf16: (SDS step, AdvDM step), GiB."""
    with torch.device("meta"):
        model = LatentDiffusion.random(name)
    size = size_of(model)
    common = {"height": resolution, "width": resolution, "batch_size": 1, "dtype": "bf16"}
    sds = estimate_bytes(size, unet_backward_draws=0, **common)
    advdm = estimate_bytes(size, unet_backward_draws=1, **common)
    return sds / GIB, advdm / GIB


def main() -> None:
    """Print the Markdown table and where each figure came from."""
    counts = newest("families-meta-*.json")
    timings = newest("families-cpu-*.json")
    print(
        "| family | supports | parameters (all parts) | weights bf16 | TFLOP per step: SDS / "
        "AdvDM / PhotoGuard | CPU s per SDS step (1 thread, bf16) | planner: peak GiB, "
        "1 image bf16, SDS / AdvDM | saved activations GiB, SDS / AdvDM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key, (name, label, supports) in FAMILIES.items():
        row = counts["rows"][key]
        flops = row["flops_per_step"]
        saved = row["saved_activation_bytes_bf16_per_step"]
        timing = timings["rows"].get(key, {}).get("timing", {})
        # An SDS step is an encoder forward + backward and a denoiser forward (no_grad).
        pieces = [timing.get(piece, {}).get("seconds") for piece in ("encoder", "denoiser")]
        cpu = f"{sum(pieces):.0f}" if all(pieces) else "not run (weights > RAM)"
        sds_gib, advdm_gib = planner_gib(name, row["resolution"])
        print(
            f"| {label} | {supports} | {row['parameters_total'] / 1e9:.2f} B | "
            f"{row['bf16_bytes_total'] / GIB:.1f} GiB | {flops['sds'] / 1e12:.1f} / "
            f"{flops['advdm'] / 1e12:.1f} / {flops['photoguard'] / 1e12:.1f} | {cpu} | "
            f"{sds_gib:.1f} / {advdm_gib:.1f} | {saved['sds'] / GIB:.1f} / "
            f"{saved['advdm'] / GIB:.1f} |"
        )
    print(f"\ncounts: bench/results/{counts['path']}; CPU: bench/results/{timings['path']}")


if __name__ == "__main__":
    main()
