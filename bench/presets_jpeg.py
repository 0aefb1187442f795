"""The speed presets against the reference on a miniature, lossless and after JPEG.

The rule for the default (``mimicshield.presets``) reads strength on lossless files; a short
attack at full budget is the kind purification is most suspected of undoing. This puts the
presets and the reference side by side on one miniature's six held-out samples (ε = 16/255,
protection seeds 0–2), as SDEdit distance from clean over the equal-budget noise control's
(``strength.SDEditProbe``), once on the protected images and once after JPEG at quality 75
applied to them and to the control alike.

    python bench/presets_jpeg.py mini         # ≈ 4 min on one loaded core
    python bench/presets_jpeg.py mini-flow    # ≈ 6 min
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from strength import SDEditProbe

from mimicshield import protect
from mimicshield.presets import SPEED_PRESETS
from mimicshield.purify import jpeg

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = 3
QUALITY = 75


def main() -> None:
    """Measure, print the ratios and write results/presets-jpeg-MODEL.json."""
    torch.set_num_threads(1)
    model_name = sys.argv[1] if len(sys.argv) > 1 else "mini"
    probe = SDEditProbe.load(model_name, eps_255=16)
    distances: dict[str, dict[str, list[float]]] = {"lossless": {}, "jpeg": {}}
    for seed in range(SEEDS):
        protected = {"noise": probe.control(seed)}
        for name in SPEED_PRESETS:
            protection = SPEED_PRESETS[name].build(eps_255=16)
            generator = torch.Generator().manual_seed(seed)
            protected[name] = protect(probe.clean, protection, probe.model, generator=generator)
        for name, images in protected.items():
            distances["lossless"].setdefault(name, []).extend(probe.distances(images))
            distances["jpeg"].setdefault(name, []).extend(probe.distances(jpeg(images, QUALITY)))
    ratios = {
        kind: {
            name: float(np.mean(rows) / np.mean(by_name["noise"])) for name, rows in by_name.items()
        }
        for kind, by_name in distances.items()
    }
    for kind, by_name in ratios.items():
        reference = by_name["reference"]
        shares = ", ".join(f"{name} {value / reference:.0%}" for name, value in by_name.items())
        print(f"{model_name} {kind}: × noise {by_name}; share of reference: {shares}")
    output = RESULTS / f"presets-jpeg-{model_name}.json"
    document = {"model": model_name, "seeds": SEEDS, "quality": QUALITY, "ratios": ratios}
    output.write_text(json.dumps(document | {"distances": distances}, indent=1))


if __name__ == "__main__":
    main()
