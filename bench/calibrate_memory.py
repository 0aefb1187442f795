"""Measure the activation memory that ``mimicshield.runtime.memory`` assumes.

Runs sds- (encoder backward only) and advdm (encoder + denoiser backward), and sds- with encoder
checkpointing, on a random-weight architecture (default: SD 1.5's) at two small resolutions, and
fits peak-memory increase = intercept + slope · pixels. The slopes are the planner's constants:

    SD15_ENCODER_BYTES_PER_PIXEL        = slope(sds-)
    SD15_UNET_BACKWARD_BYTES_PER_PIXEL  = slope(advdm) − slope(sds-)        (UNet families)
    CHECKPOINTED_ENCODER_FRACTION       = slope(sds-, checkpointed) / slope(sds-)

For a transformer family (``--model sd35-medium-random`` or ``flux-dev-random``, on a GPU) it
also reports the value the planner's uncalibrated ``TRANSFORMER_BACKWARD_VALUES`` estimates: the
advdm − sds- difference per image token, hidden unit, block and byte of the element size.

Usage: python bench/calibrate_memory.py [--model sd15-random] [--device cpu] [--dtype fp32]
       [--resolutions 128,256] [--output F.json]
A few minutes on a 2-core CPU for SD 1.5; on a GPU the peak is CUDA's max allocated.
"""

from __future__ import annotations

import argparse
import json

from mimicshield.models import LatentDiffusion
from mimicshield.runtime.benchmark import measure
from mimicshield.runtime.memory import TRANSFORMER_BACKWARD_VALUES, ModelSize
from mimicshield.runtime.speed import SpeedOptions, configure


def main() -> None:
    """Measure the three configurations at two resolutions; print the fitted constants as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--resolutions", default="128,256")
    parser.add_argument("--output")
    args = parser.parse_args()
    low, high = (int(side) for side in args.resolutions.split(","))

    rows = []
    model = LatentDiffusion.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    size = ModelSize.of(model)
    for method in ("sds-", "advdm"):
        for side in (low, high):
            rows.append(measure(model, method, resolution=side, steps_timed=1) | {"ckpt": False})
    configure(model, SpeedOptions(encoder_checkpointing=True))
    for side in (low, high):
        rows.append(measure(model, "sds-", resolution=side, steps_timed=1) | {"ckpt": True})

    def slope(method: str, ckpt: bool) -> float:
        small, large = (r for r in rows if r["method"] == method and r["ckpt"] == ckpt)
        pixels = large["resolution"] ** 2 - small["resolution"] ** 2
        return (large["memory_increase_bytes"] - small["memory_increase_bytes"]) / pixels

    encoder = slope("sds-", False)
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "memory_kind": rows[0]["memory_kind"],
        "device_name": rows[0]["device_name"],
        "SD15_ENCODER_BYTES_PER_PIXEL": encoder,
        "SD15_UNET_BACKWARD_BYTES_PER_PIXEL": slope("advdm", False) - encoder,
        "CHECKPOINTED_ENCODER_FRACTION": slope("sds-", True) / encoder,
        "rows": [
            {
                k: r[k]
                for k in (
                    "method",
                    "ckpt",
                    "resolution",
                    "memory_increase_bytes",
                    "peak_memory_bytes",
                    "step_seconds",
                )
            }
            for r in rows
        ],
    }
    if size.transformer is not None:
        # The denoiser's share per pixel, spread over the tokens, width, blocks and element size.
        element = model.dtype.itemsize
        transformer = size.transformer
        pixels_per_token = (size.vae_scale_factor * transformer.patch_size) ** 2
        per_token = (slope("advdm", False) - encoder) * pixels_per_token
        result["TRANSFORMER_BACKWARD_VALUES"] = per_token / (
            transformer.width * transformer.layers * element
        )
        result["TRANSFORMER_BACKWARD_VALUES_assumed"] = TRANSFORMER_BACKWARD_VALUES
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as stream:
            json.dump(result, stream, indent=2)


if __name__ == "__main__":
    main()
