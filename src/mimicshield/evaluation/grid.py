"""The evaluation grid: method × purifier × scenario over a set of images (DESIGN §4).

For every method the images are protected once (cached as 8-bit PNGs within budget, exactly what
a user would post), purified by each purifier, and run through each mimicry scenario with the
*same* seed as the clean images, so that the difference between the two mimicry outputs is the
protection's effect and not sampling noise. Measurements go to a ``ResultsStore`` row by row; a
re-run with the same settings loads cached images and skips finished rows.

Rows (``KEY_COLUMNS`` = method, purifier, scenario, variant, image):
- scenario ``visibility``: protected vs clean (how visible the perturbation is), latent shift,
  seconds and peak memory of the protection;
- a mimicry scenario, per image: mimicry of the purified protected image vs mimicry of the clean
  image (how much the protection changed what the imitator gets);
- the same scenario with image ``*``: set metrics (FD) over all images of that cell.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..budget import Budget, quantise_within_budget
from ..imagefiles import LoadedImage, read_back, to_levels, write_levels_png
from ..methods import METHODS
from ..metrics import LoadedMetrics
from ..mimicry import Scenario
from ..models import LatentDiffusion
from ..protect import noise_control, protect
from ..purify import Purifier
from .results import KEY_COLUMNS, ResultsStore

logger = logging.getLogger(__name__)

#: The control: uniform random signs of the full budget, the strongest perturbation that carries
#: no information about the model.
NOISE_CONTROL = "noise"
#: Called with a short description of each finished unit of work, for progress bars.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvaluationPlan:
    """What to evaluate.

    Attributes:
        methods: names from ``METHODS``, or ``noise`` for the random-noise control.
        purifiers: applied to protected images before mimicry (``none`` for no purification).
        scenarios: mimicry scenarios.
        budget: the protection budget (shared by all methods and the control).
        prompt: protection and mimicry prompt.
        seed: one seed for protection, purification and mimicry; clean and protected images see
            the same noise in mimicry.
    """

    methods: tuple[str, ...]
    purifiers: tuple[Purifier, ...]
    scenarios: tuple[Scenario, ...]
    budget: Budget = Budget()
    prompt: str = "a photo"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS and m != NOISE_CONTROL]
        if unknown:
            choices = ", ".join([*METHODS, NOISE_CONTROL])
            raise ValueError(f"unknown method {', '.join(map(repr, unknown))}; known: {choices}")
        if not self.methods or not self.purifiers or not self.scenarios:
            raise ValueError("an evaluation needs at least one method, purifier and scenario")

    def fingerprint(self, model: LatentDiffusion, images: list[LoadedImage]) -> dict:
        """Everything the cached results depend on; a change starts the results afresh."""
        return {
            "model": model.describe(),
            "budget": self.budget.as_record(),
            "prompt": self.prompt,
            "seed": self.seed,
            "scenarios": [repr(scenario) for scenario in self.scenarios],
            "images": [str(image.path) for image in images],
        }


class Evaluation:
    """One evaluation run over ``images`` into ``folder``; call ``run()``.

    Layout of ``folder``: PNGs in ``clean/``, ``protected/<method>/``, ``mimicry/clean/<variant>/``
    and ``mimicry/<method>/<purifier>/<variant>/``; ``results.json`` and ``results.csv``.
    """

    def __init__(
        self,
        images: list[LoadedImage],
        plan: EvaluationPlan,
        model: LatentDiffusion,
        folder: Path,
        metrics: LoadedMetrics,
        progress: Progress | None = None,
    ):
        if not images:
            raise ValueError("no images to evaluate")
        self.images, self.plan, self.model, self.folder = images, plan, model, folder
        self.metrics = metrics
        self.progress = progress or (lambda description: None)
        folder.mkdir(parents=True, exist_ok=True)
        self.store = ResultsStore(folder, plan.fingerprint(model, images))
        if self.store.stale:
            # Cached images of other settings must not be mistaken for this run's.
            logger.warning("%s holds results of other settings; starting afresh", folder)
            for cache in ("protected", "mimicry"):
                shutil.rmtree(folder / cache, ignore_errors=True)
        self.names = _unique_stems(images)

    def units(self) -> int:
        """How many progress steps ``run`` reports."""
        per_method = 1 + len(self.plan.purifiers) * len(self.plan.scenarios)
        return len(self.plan.scenarios) + len(self.plan.methods) * per_method

    def run(self) -> ResultsStore:
        """Protect, purify, mimic and measure everything not measured yet."""
        # 1. Mimicry of the clean images: the reference of every comparison.
        clean = [image.pixels.unsqueeze(0) for image in self.images]
        (self.folder / "clean").mkdir(exist_ok=True)
        for name, image in zip(self.names, clean, strict=True):
            write_levels_png(self.folder / "clean" / f"{name}.png", to_levels(image[0]))
        references = {}
        for scenario in self.plan.scenarios:
            references[scenario.name] = self._mimic(scenario, clean, ("clean",))
            self.progress(f"clean {scenario.name}")

        for method in self.plan.methods:
            # 2. Protection, cached on disk as the 8-bit files a user would post.
            protected = self._protect(method, clean)
            self.progress(f"{method} protect")
            for purifier in self.plan.purifiers:
                # 3. Purification, then each scenario, compared with the clean reference.
                purified = [self._purify(purifier, image) for image in protected]
                for scenario in self.plan.scenarios:
                    cell = (method, purifier.name, scenario.name)
                    outputs = self._mimic(scenario, purified, cell[:2])
                    self._measure_mimicry(cell, scenario, outputs, references[scenario.name])
                    self.progress(f"{method} {purifier.name} {scenario.name}")
        return self.store

    # ----------------------------------------------------------------- steps

    def _protect(self, method: str, clean: list[torch.Tensor]) -> list[torch.Tensor]:
        folder = self.folder / "protected" / method
        folder.mkdir(parents=True, exist_ok=True)
        protected = []
        for name, image in zip(self.names, clean, strict=True):
            path = folder / f"{name}.png"
            key = (method, "none", "visibility", "protected", name)
            if path.is_file() and self.store.has(key):
                protected.append(_read_png(path))
                continue
            started, peak = _start_measuring(self.model.device)
            result = self._perturb(method, image)
            seconds = time.perf_counter() - started
            levels = quantise_within_budget(result[0], image[0], self.plan.budget.eps)
            write_levels_png(path, levels)
            saved = levels.float().unsqueeze(0) / 255
            protected.append(saved)
            row = dict(zip(KEY_COLUMNS, key, strict=True))
            row |= {"seconds": round(seconds, 3), "peak_memory_mib": peak()}
            row |= _floats(self.metrics.measure_pairs(saved, image))
            self.store.add([row])
        return protected

    def _perturb(self, method: str, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.plan.seed)
        if method == NOISE_CONTROL:
            return noise_control(image, self.plan.budget.eps, generator)
        chosen = METHODS[method](budget=self.plan.budget, prompt=self.plan.prompt)
        return protect(image, chosen, self.model, generator=generator)

    def _purify(self, purifier: Purifier, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.plan.seed)
        return purifier(image, generator=generator, model=self.model)

    def _mimic(
        self, scenario: Scenario, images: list[torch.Tensor], cell: tuple[str, ...]
    ) -> dict[str, list[torch.Tensor]]:
        """Variant → one output per image (per-image scenarios) or the generated set.

        Outputs are cached as ``mimicry/<cell...>/<variant>/<name>.png``; variant names are unique
        across scenarios, so the scenario is not part of the path.
        """
        folder = self.folder.joinpath("mimicry", *cell)
        if scenario.per_image:
            outputs: dict[str, list[torch.Tensor]] = {v: [] for v in scenario.variants()}
            for name, image in zip(self.names, images, strict=True):
                for variant, output in self._cached_run(scenario, image, folder, [name]).items():
                    outputs[variant].extend(output)
            return outputs
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) > 1:
            raise ValueError(
                f"{scenario.name} learns from the whole set, which needs images of one size; "
                f"got sizes {sorted(sizes)}"
            )
        return self._cached_run(scenario, torch.cat(images), folder, self._output_names(scenario))

    def _output_names(self, scenario: Scenario) -> list[str]:
        """One name per output: the image's for per-image scenarios, else generated-<i>."""
        if scenario.per_image:
            return self.names
        return [f"generated-{index}" for index in range(scenario.num_images)]

    def _cached_run(
        self, scenario: Scenario, images: torch.Tensor, folder: Path, names: list[str]
    ) -> dict[str, list[torch.Tensor]]:
        paths = {v: [folder / v / f"{n}.png" for n in names] for v in scenario.variants()}
        if all(path.is_file() for group in paths.values() for path in group):
            return {v: [_read_png(p) for p in group] for v, group in paths.items()}
        generator = torch.Generator().manual_seed(self.plan.seed)
        outputs = scenario.run(self.model, images, prompt=self.plan.prompt, generator=generator)
        result = {}
        for variant, batch in outputs.items():
            (folder / variant).mkdir(parents=True, exist_ok=True)
            result[variant] = []
            for path, output in zip(paths[variant], batch, strict=True):
                levels = to_levels(output.cpu())
                write_levels_png(path, levels)
                result[variant].append(levels.float().unsqueeze(0) / 255)
        return result

    def _measure_mimicry(
        self,
        cell: tuple[str, str, str],
        scenario: Scenario,
        outputs: dict[str, list[torch.Tensor]],
        references: dict[str, list[torch.Tensor]],
    ) -> None:
        """Pair metrics per output (same seed, clean vs protected) and set metrics per variant."""
        names = self._output_names(scenario)
        for variant, group in outputs.items():
            rows = []
            for name, output, reference in zip(names, group, references[variant], strict=True):
                key = (*cell, variant, name)
                if not self.store.has(key):
                    row = dict(zip(KEY_COLUMNS, key, strict=True))
                    rows.append(row | _floats(self.metrics.measure_pairs(output, reference)))
            set_key = (*cell, variant, "*")
            if self.metrics.sets and not self.store.has(set_key) and len(group) > 1:
                values = self.metrics.measure_sets(_stack(group), _stack(references[variant]))
                row = dict(zip(KEY_COLUMNS, set_key, strict=True))
                rows.append(row | {name: round(value, 6) for name, value in values.items()})
            if rows:
                self.store.add(rows)


def _unique_stems(images: list[LoadedImage]) -> list[str]:
    names: list[str] = []
    for image in images:
        stem, counter = image.path.stem, 2
        while stem in names:
            stem, counter = f"{image.path.stem}-{counter}", counter + 1
        names.append(stem)
    return names


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack (1, 3, H, W) images, resizing to the first one's size where sizes differ."""
    size = images[0].shape[-2:]
    resized = [
        image
        if image.shape[-2:] == size
        else torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear")
        for image in images
    ]
    return torch.cat(resized)


def _floats(columns: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """First value of each (1,) column as a rounded float; non-finite values become None."""
    values = {}
    for name, tensor in columns.items():
        value = float(tensor.reshape(-1)[0])
        values[name] = round(value, 6) if np.isfinite(value) else None
    return values


def _start_measuring(device: torch.device) -> tuple[float, Callable[[], float | None]]:
    """Start a timer and, on CUDA, the peak-memory counter (CPU peaks are per process only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

        def peak() -> float | None:
            torch.cuda.synchronize(device)
            return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)

        return time.perf_counter(), peak
    return time.perf_counter(), lambda: None


def _read_png(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] from a PNG we wrote."""
    return read_back(path).unsqueeze(0)


def plan_record(plan: EvaluationPlan) -> str:
    """The plan as JSON text for the report header."""
    return json.dumps(
        {
            "methods": plan.methods,
            "purifiers": [purifier.name for purifier in plan.purifiers],
            "scenarios": [
                asdict(scenario) | {"name": scenario.name} for scenario in plan.scenarios
            ],
            "budget": plan.budget.as_record(),
            "prompt": plan.prompt,
            "seed": plan.seed,
        },
        indent=1,
    )
