"""The evaluation grid: method × purifier × scenario × victim over a set of images (DESIGN §4).

For every method the images are protected once against the *surrogate* model (cached as 8-bit
PNGs within budget, exactly what a user would post). Each *victim* model (the imitator's; by
default the surrogate itself) then purifies them with each purifier and runs each mimicry
scenario, with the *same* seed as for the clean images, so that the difference between the two
mimicry outputs is the protection's effect and not sampling noise.

Rows (``KEY_COLUMNS`` = method, purifier, scenario, variant, victim, baseline, image):
- scenario ``visibility``: protected vs clean (how visible the perturbation is), latent shift,
  seconds and peak memory of the protection;
- a mimicry scenario, per image, once per *baseline*: the mimicry of the purified protected image
  against ``clean``, the mimicry of the clean image (what the imitator would ideally get), and
  against ``purified-clean``, the mimicry of the clean image under the same purifier (what the
  protection adds to the purifier's own damage); for purifier ``none`` the two are the same;
- the same with image ``*``: set metrics (FD) over all images of that cell, or a note saying why
  the set is too small for them.

Resuming: every cached image and every row is keyed by a digest of all it depends on (image
content, package version, surrogate, budget, method, purifier settings, victim, scenario, seed;
see ``results``), so a changed setting recomputes exactly what it affects: a new metric is
measured on the stored images, a changed purifier redoes that purifier's cells only.

Several processes (``accelerate launch``) each take every ``count``-th image, write their rows to
a part file, and the main process merges the parts, then runs what needs all images: the set
scenarios (textual inversion) and the set metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .. import __version__
from ..budget import Budget, quantise_within_budget
from ..filesystem import atomic_write_text
from ..imagefiles import LoadedImage, read_back, to_levels, write_levels_png
from ..methods import METHODS
from ..metrics import MIN_MEANINGFUL_SET, SSIM_MIN_SIZE, LoadedMetrics, SmallSampleWarning
from ..mimicry import Scenario
from ..models import LatentDiffusion
from ..protect import noise_control, protect
from ..purify import NoPurification, Purifier
from .results import FORMAT, ResultsStore, Row

logger = logging.getLogger(__name__)

#: The control: uniform random signs of the full budget, the strongest perturbation that carries
#: no information about the model.
NOISE_CONTROL = "noise"
#: The two references a purified protected image's mimicry is compared with (see the module).
BASELINES = ("clean", "purified-clean")
#: The method name of the clean images in cache paths.
CLEAN = "clean"
#: Called with a short description of each finished unit of work, for progress bars.
Progress = Callable[[str], None]


class ProcessGroup(Protocol):
    """Where this process stands among those of one run (``runtime.Processes`` is one)."""

    index: int
    count: int

    @property
    def is_main(self) -> bool:
        """Whether this is the process that merges the parts and writes the report."""
        ...

    def wait_for_everyone(self) -> None:
        """Return once every process of the run has called it."""
        ...


@dataclass(frozen=True)
class _LoneProcess:
    index: int = 0
    count: int = 1
    is_main: bool = True

    def wait_for_everyone(self) -> None:
        pass


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

    def method_setting(self, method: str) -> str:
        """The method with every hyper-parameter, defaults included (a digest input)."""
        if method == NOISE_CONTROL:
            return f"{NOISE_CONTROL} eps={self.budget.eps!r}"
        return repr(METHODS[method](budget=self.budget, prompt=self.prompt))


class Evaluation:
    """One evaluation run over ``images`` into ``folder``; call ``run()``.

    Args:
        images: the clean images.
        plan: what to evaluate.
        model: the surrogate, which protection attacks (and whose encoder the latent shift
            measures).
        folder: output folder (see below).
        metrics: the loaded metrics.
        progress: called after each unit of work (``units()`` of them).
        victims: the imitators' models, which purify (diffusion purification) and mimic; by
            default the surrogate alone.
        processes: this process's place in a multi-process run; by default a lone process.

    Raises:
        ValueError: no images, a set scenario on images of several sizes, or a scenario that a
            victim's family cannot run (textual inversion on SD3 or FLUX, say).

    Layout of ``folder``: PNGs in ``clean/``, ``protected/<method>/`` and
    ``mimicry/<victim>/<method or clean>/<purifier>/<variant>/``, each with a hidden
    ``.<name>.key`` file holding the digest it was made from; ``results.json``, ``results.csv``.
    """

    def __init__(
        self,
        images: list[LoadedImage],
        plan: EvaluationPlan,
        model: LatentDiffusion,
        folder: Path,
        metrics: LoadedMetrics,
        progress: Progress | None = None,
        victims: Iterable[LatentDiffusion] | None = None,
        processes: ProcessGroup | None = None,
    ):
        if not images:
            raise ValueError("no images to evaluate")
        sizes = sorted({image.size for image in images})
        if len(sizes) > 1 and any(not scenario.per_image for scenario in plan.scenarios):
            # Found now, not after hours of per-image work: a set scenario learns from one size.
            raise ValueError(
                f"set scenarios (textual inversion) need images of one size; got sizes {sizes}"
            )
        self.images, self.plan, self.model, self.folder = images, plan, model, folder
        self.metrics = metrics
        self.progress = progress or (lambda description: None)
        self.processes = processes or _LoneProcess()
        chosen = list(victims) if victims else [model]
        for scenario in plan.scenarios:  # a family that cannot run one is found now, too
            for victim in chosen:
                scenario.check(victim)
        self.victims = dict(zip(_labels(chosen), chosen, strict=True))
        self.names = _unique_stems(images)
        self.contents = {
            n: _digest(_pixel_bytes(i)) for n, i in zip(self.names, images, strict=True)
        }
        # Rows (not images) also depend on the purifier list: "none" is always the reference.
        self.purifiers = {p.name: p for p in (NoPurification(), *plan.purifiers)}
        # Rows of pair metrics are complete when every loaded pair metric is in them; metrics
        # that cannot load here are left to a run where they can.
        self.pair_settings = {n: s for n, s in metrics.settings.items() if n in metrics.pair}
        self.set_settings = {n: s for n, s in metrics.settings.items() if n in metrics.sets}
        (folder / "clean").mkdir(parents=True, exist_ok=True)
        fingerprint = {"format": FORMAT}
        self.store = ResultsStore(folder, fingerprint)
        if self.store.stale:
            logger.warning("%s holds results of another format; starting afresh", folder)
        if self.processes.count > 1 and not self.processes.is_main:
            # This process's rows go to its own file; it resumes from the merged ones.
            part = ResultsStore(folder, fingerprint, name=self._part_name(self.processes.index))
            part.add(row for row in self.store.rows if row["image"] in self._share())
            self.store = part
        # Values of a metric asked for with another setting (e.g. another CLIP) are not kept,
        # even where that metric cannot be loaded this time.
        self.store.forget_changed(metrics.settings)

    # ----------------------------------------------------------------- the run

    def units(self) -> int:
        """How many progress steps ``run`` reports in this process."""
        images = len(self._share())
        sets = len(self.victims) * len(self.plan.methods) if self.processes.is_main else 0
        return images * (1 + len(self.plan.methods)) + sets

    def run(self) -> ResultsStore:
        """Protect, purify, mimic and measure everything not measured yet; the merged store.

        In a multi-process run, other processes return their part once their images are done.
        """
        # 1. This process's images: protection, purification, per-image mimicry, pair metrics.
        for name in self._share():
            self._evaluate_image(name)
        if self.processes.count > 1:
            self.processes.wait_for_everyone()
            if not self.processes.is_main:
                return self.store
            self._merge_parts()
        # 2. What needs every image: set scenarios and set metrics; then forget old settings.
        for victim in self.victims:
            for method in self.plan.methods:
                self._evaluate_sets(victim, method)
                self.progress(f"{victim} {method} sets")
        self.store.keep(self._wanted)
        return self.store

    def _share(self) -> list[str]:
        """This process's images: every ``count``-th from ``index`` (round robin)."""
        return self.names[self.processes.index :: self.processes.count]

    @staticmethod
    def _part_name(index: int) -> str:
        return f"results.part-{index}"

    def _merge_parts(self) -> None:
        for index in range(1, self.processes.count):
            part = ResultsStore(self.folder, self.store.fingerprint, name=self._part_name(index))
            self.store.add(part.rows)
            part.remove_files()

    def _wanted(self, row: Row) -> bool:
        """Whether a stored row belongs to the current plan (others are of old settings)."""
        if row["scenario"] == "visibility":
            return row["method"] in self.plan.methods and row["image"] in self.names
        variants = {v for scenario in self.plan.scenarios for v in scenario.variants()}
        generated = max((s.num_images for s in self.plan.scenarios if not s.per_image), default=0)
        images = {*self.names, "*", *(f"generated-{i}" for i in range(generated))}
        return (
            row["method"] in self.plan.methods
            and row["purifier"] in {p.name for p in self.plan.purifiers}
            and row["victim"] in self.victims
            and row["variant"] in variants
            and row["baseline"] in BASELINES
            and row["image"] in images
        )

    # ----------------------------------------------------------------- per image

    def _evaluate_image(self, name: str) -> None:
        clean = self.images[self.names.index(name)].pixels.unsqueeze(0)
        write_levels_png(self.folder / "clean" / f"{name}.png", to_levels(clean[0]))
        scenarios = [s for s in self.plan.scenarios if s.per_image]
        self.progress(f"{name} clean")
        for method in self.plan.methods:
            protected = self._protect(method, name, clean)
            for victim in self.victims:
                for purifier in self.plan.purifiers:
                    for scenario in scenarios:
                        cell = _Cell(method, purifier.name, scenario, victim)
                        outputs = self._mimic_one(cell, name, protected)
                        references = {
                            baseline: self._mimic_one(cell.reference(baseline), name, lambda: clean)
                            for baseline in BASELINES
                        }
                        self._measure_pairs(cell, [name], outputs, references)
            self.progress(f"{name} {method}")

    def _protect(self, method: str, name: str, clean: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The protected image, cached; returned as a thunk so a resumed run never reads it."""
        path = self.folder / "protected" / method / f"{name}.png"
        key = self._source_key(method, name)
        row_key = (method, "none", "visibility", "protected", "", "clean", name)
        missing = self.store.missing_metrics(row_key, key, self.pair_settings)
        if _is_cached(path, key) and not missing:
            return lambda: _read_png(path)
        if _is_cached(path, key):
            saved, timing = _read_png(path), {}
        else:
            started, peak = _start_measuring(self.model.device)
            result = self._perturb(method, clean)
            timing = {"seconds": round(time.perf_counter() - started, 3), "peak_memory_mib": peak()}
            levels = quantise_within_budget(result[0], clean[0], self.plan.budget.eps)
            _write_cached(path, key, levels)
            saved = levels.float().unsqueeze(0) / 255
            missing = list(self.pair_settings)
        values, measured = self._pair_values(missing, saved, clean)
        self.store.add([self.store.update(row_key, key, timing | values, measured)])
        return lambda: saved

    def _perturb(self, method: str, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.plan.seed)
        if method == NOISE_CONTROL:
            return noise_control(image, self.plan.budget.eps, generator)
        chosen = METHODS[method](budget=self.plan.budget, prompt=self.plan.prompt)
        return protect(image, chosen, self.model, generator=generator)

    def _mimic_one(
        self, cell: _Cell, name: str, source: Callable[[], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Variant → (1, 3, H, W) mimicry output of one image's purified ``source``, cached."""
        key = self._output_key(cell, [name])
        paths = {v: self._cell_folder(cell) / v / f"{name}.png" for v in cell.scenario.variants()}
        if all(_is_cached(path, key) for path in paths.values()):
            return {variant: _read_png(path) for variant, path in paths.items()}
        purified = self._purify(cell, source())
        generator = torch.Generator().manual_seed(self.plan.seed)
        victim = self.victims[cell.victim]
        outputs = cell.scenario.run(victim, purified, prompt=self.plan.prompt, generator=generator)
        return {
            v: _write_cached(paths[v], key, to_levels(out[0].cpu()))[None]
            for v, out in outputs.items()
        }

    def _purify(self, cell: _Cell, images: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.plan.seed)
        purifier = self.purifiers[cell.purifier]
        return purifier(images, generator=generator, model=self.victims[cell.victim])

    # ----------------------------------------------------------------- sets

    def _evaluate_sets(self, victim: str, method: str) -> None:
        """Set scenarios (all images at once) and set metrics over the per-image outputs."""
        for scenario in self.plan.scenarios:
            for purifier in self.plan.purifiers:
                cell = _Cell(method, purifier.name, scenario, victim)
                if scenario.per_image:
                    outputs = self._stored_outputs(cell)
                    references = {b: self._stored_outputs(cell.reference(b)) for b in BASELINES}
                else:
                    outputs = self._mimic_set(cell)
                    references = {b: self._mimic_set(cell.reference(b)) for b in BASELINES}
                    names = [f"generated-{i}" for i in range(scenario.num_images)]
                    self._measure_pairs(cell, names, outputs, references)
                self._measure_sets(cell, outputs, references)

    def _mimic_set(self, cell: _Cell) -> dict[str, list[torch.Tensor]]:
        """Variant → generated images of a set scenario over all images, cached."""
        names = [f"generated-{i}" for i in range(cell.scenario.num_images)]
        key = self._output_key(cell, self.names)
        folder = self._cell_folder(cell)
        paths = {v: [folder / v / f"{n}.png" for n in names] for v in cell.scenario.variants()}
        if all(_is_cached(p, key) for group in paths.values() for p in group):
            return {v: [_read_png(p) for p in group] for v, group in paths.items()}
        sources = [self._source_image(cell.method, name) for name in self.names]
        purified = self._purify(cell, torch.cat(sources))
        generator = torch.Generator().manual_seed(self.plan.seed)
        victim = self.victims[cell.victim]
        outputs = cell.scenario.run(victim, purified, prompt=self.plan.prompt, generator=generator)
        return {
            v: [
                _write_cached(p, key, to_levels(o.cpu()))[None]
                for p, o in zip(paths[v], batch, strict=True)
            ]
            for v, batch in outputs.items()
        }

    def _source_image(self, method: str, name: str) -> torch.Tensor:
        """The clean image, or its protected file (which the per-image phase wrote)."""
        if method == CLEAN:
            return self.images[self.names.index(name)].pixels.unsqueeze(0)
        return _read_png(self.folder / "protected" / method / f"{name}.png")

    def _stored_outputs(self, cell: _Cell) -> dict[str, list[torch.Tensor]]:
        """Variant → every image's cached per-image output (paths only; read on demand)."""
        folder = self._cell_folder(cell)
        return {v: [folder / v / f"{n}.png" for n in self.names] for v in cell.scenario.variants()}

    # ----------------------------------------------------------------- measuring

    def _measure_pairs(
        self,
        cell: _Cell,
        names: list[str],
        outputs: dict[str, list[torch.Tensor] | torch.Tensor],
        references: dict[str, dict],
    ) -> None:
        """Pair metrics of each output against each baseline's reference, missing ones only."""
        rows = []
        for variant, group in outputs.items():
            group = group if isinstance(group, list) else [group]
            for index, (name, output) in enumerate(zip(names, group, strict=True)):
                for baseline in BASELINES:
                    reference = references[baseline][variant]
                    reference = reference[index] if isinstance(reference, list) else reference
                    key = cell.row_key(variant, baseline, name)
                    inputs = _digest(
                        self._output_key(cell, self._inputs_of(cell, name)),
                        self._output_key(cell.reference(baseline), self._inputs_of(cell, name)),
                    )
                    missing = self.store.missing_metrics(key, inputs, self.pair_settings)
                    if missing:
                        values, measured = self._pair_values(missing, output, reference)
                        rows.append(self.store.update(key, inputs, values, measured))
        if rows:
            self.store.add(rows)

    def _inputs_of(self, cell: _Cell, name: str) -> list[str]:
        """The images an output depends on: its own for per-image scenarios, else all."""
        return [name] if cell.scenario.per_image else self.names

    def _pair_values(
        self, names: list[str], images: torch.Tensor, references: torch.Tensor
    ) -> tuple[Row, Row]:
        """(column → value, metric → {setting, columns}) of the pair metrics ``names``."""
        metrics = self.metrics.only(names)
        values: Row = {}
        notes = []
        if "ssim" in metrics.pair and min(images.shape[-2:]) < SSIM_MIN_SIZE:
            # SSIM needs one whole 11-pixel window; a smaller image gets a note, not a value.
            metrics = metrics.only(n for n in names if n != "ssim")
            notes.append(f"ssim skipped: the image is under {SSIM_MIN_SIZE} pixels on a side")
        measured = {
            name: {"setting": metrics.settings.get(name, name), "columns": []}
            for name in names
            if name in metrics.pair or name == "ssim"
        }
        for column, tensor in metrics.measure_pairs(images, references).items():
            values[column] = _stored_value(column, float(tensor[0]), images[0].numel())
            measured[_metric_of(column, measured)]["columns"].append(column)
        if notes:
            values["note"] = "; ".join(notes)
            measured["ssim"]["columns"].append("note")
        return values, measured

    def _measure_sets(self, cell: _Cell, outputs: dict, references: dict) -> None:
        """Set metrics per variant and baseline, or a note where the set is too small."""
        settings = self.set_settings
        if not settings:
            return
        rows = []
        for variant, group in outputs.items():
            for baseline in BASELINES:
                key = cell.row_key(variant, baseline, "*")
                inputs = _digest(
                    self._output_key(cell, self.names),
                    self._output_key(cell.reference(baseline), self.names),
                )
                missing = self.store.missing_metrics(key, inputs, settings)
                if missing:
                    values = self._set_values(missing, group, references[baseline][variant])
                    measured = {
                        name: {"setting": settings[name], "columns": [name, "note"]}
                        for name in missing
                    }
                    rows.append(self.store.update(key, inputs, values, measured))
        if rows:
            self.store.add(rows)

    def _set_values(self, names: list[str], images: list, references: list) -> Row:
        """Set metric values, or ``None`` with a note where the set is too small for them."""
        if len(images) < MIN_MEANINGFUL_SET:
            reason = (
                f"not computed: {len(images)} images per set, under the {MIN_MEANINGFUL_SET} a "
                "Fréchet distance needs to mean anything"
            )
            return dict.fromkeys(names) | {"note": reason}
        metrics = self.metrics.only(names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SmallSampleWarning)
            values = metrics.measure_sets(_stack(images), _stack(references))
        small = [w for w in caught if issubclass(w.category, SmallSampleWarning)]
        if small:  # no more images than feature dimensions: the covariance is singular
            return dict.fromkeys(names) | {"note": f"not reported: {small[0].message}"}
        return {name: round(value, 6) for name, value in values.items()} | {"note": None}

    # ----------------------------------------------------------------- keys

    def _source_key(self, method: str, name: str) -> str:
        """Digest of a clean or protected image: its content and, if protected, how."""
        if method == CLEAN:
            return _digest(CLEAN, self.contents[name])
        return _digest(
            __version__,
            _model_identity(self.model),
            json.dumps(self.plan.budget.as_record(), sort_keys=True),
            self.plan.prompt,
            str(self.plan.seed),
            self.plan.method_setting(method),
            self.contents[name],
        )

    def _output_key(self, cell: _Cell, names: list[str]) -> str:
        """Digest of a mimicry output: its sources, purifier, victim, scenario, prompt and seed."""
        purifier = self.purifiers[cell.purifier]
        return _digest(
            __version__,
            *(self._source_key(cell.method, name) for name in names),
            repr(purifier),
            _model_identity(self.victims[cell.victim]),
            repr(cell.scenario),
            _scenario_inputs(cell.scenario),
            self.plan.prompt,
            str(self.plan.seed),
        )

    def _cell_folder(self, cell: _Cell) -> Path:
        return self.folder / "mimicry" / cell.victim / cell.method / cell.purifier


@dataclass(frozen=True)
class _Cell:
    """One (method, purifier, scenario, victim) of the grid; ``method`` may be ``CLEAN``."""

    method: str
    purifier: str
    scenario: Scenario
    victim: str

    def reference(self, baseline: str) -> _Cell:
        """The clean images' cell that ``baseline`` compares with."""
        purifier = self.purifier if baseline == "purified-clean" else "none"
        return _Cell(CLEAN, purifier, self.scenario, self.victim)

    def row_key(self, variant: str, baseline: str, image: str) -> tuple[str, ...]:
        values = (self.method, self.purifier, self.scenario.name, variant, self.victim, baseline)
        return (*values, image)


def _labels(victims: list[LatentDiffusion]) -> list[str]:
    """A short, unique, path-safe label per victim: its name's last part (``mini``, ``sd15``)."""
    labels: list[str] = []
    for victim in victims:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(victim.name).name) or "model"
        label, counter = base, 2
        while label in labels:
            label, counter = f"{base}-{counter}", counter + 1
        labels.append(label)
    return labels


def _unique_stems(images: list[LoadedImage]) -> list[str]:
    names: list[str] = []
    for image in images:
        stem, counter = image.path.stem, 2
        while stem in names:
            stem, counter = f"{image.path.stem}-{counter}", counter + 1
        names.append(stem)
    return names


def _pixel_bytes(image: LoadedImage) -> bytes:
    """The decoded pixels and their shape: what the evaluation sees of the file."""
    pixels = image.pixels.detach().cpu().contiguous()
    return str(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()


def _digest(*parts: str | bytes) -> str:
    """16 hex digits of SHA-256 over the parts (length-prefixed, so parts cannot run together)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


def _metric_of(column: str, measured: Row) -> str:
    """The metric a column came from (``latent_shift_ratio`` → ``latent_shift``)."""
    return max((name for name in measured if column.startswith(name)), key=len)


def _stored_value(column: str, value: float, values_per_image: int) -> float | None:
    """A measured value as stored: rounded; +inf PSNR capped; other non-finite values None.

    Identical images have infinite PSNR. Dropping those from a mean would bias it toward
    "stronger protection"; storing inf would make every mean with one of them infinite. They are
    stored as the PSNR of the smallest possible difference instead, one 8-bit level in one of the
    image's ``values_per_image`` values: 10·log10(255² · C·H·W), just above every finite value the
    8-bit images compared here can have.
    """
    if column == "psnr" and value == float("inf"):
        return round(10 * np.log10(255.0**2 * values_per_image), 6)
    return round(value, 6) if np.isfinite(value) else None


def _is_cached(path: Path, key: str) -> bool:
    """Whether ``path`` exists and was made from ``key`` (its key file is written after it)."""
    marker = path.with_name(f".{path.name}.key")
    return path.is_file() and marker.is_file() and marker.read_text() == key


def _write_cached(path: Path, key: str, levels: torch.Tensor) -> torch.Tensor:
    """Write 8-bit levels (3, H, W) as ``path`` and its key; the pixels as read back (3, H, W).

    The old key goes first and the new one last, both atomically: a crash in between leaves an
    image without a key, which is recomputed, never an image under a key it does not match.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = path.with_name(f".{path.name}.key")
    marker.unlink(missing_ok=True)
    write_levels_png(path, levels)
    atomic_write_text(marker, key)
    return levels.float() / 255


def _model_identity(model: LatentDiffusion) -> str:
    """What of a model decides its results: ``describe()`` less the device it ran on."""
    facts = {key: value for key, value in model.describe().items() if key != "device"}
    return json.dumps(facts, sort_keys=True)


def _scenario_inputs(scenario: Scenario) -> str:
    """Digest of the tensors a scenario holds outside its ``repr`` (an inpainting mask image)."""
    mask = getattr(scenario, "mask_image", None)
    if mask is None:
        return ""
    values = mask.detach().cpu().float().numpy()
    return hashlib.sha256(str(values.shape).encode() + values.tobytes()).hexdigest()


def _stack(images: list[torch.Tensor | Path]) -> torch.Tensor:
    """Stack (1, 3, H, W) images or PNG paths, resized to the first one's size where needed."""
    tensors = [_read_png(image) if isinstance(image, Path) else image for image in images]
    size = tensors[0].shape[-2:]
    resized = [
        image
        if image.shape[-2:] == size
        else torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear")
        for image in tensors
    ]
    return torch.cat(resized)


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


def plan_record(plan: EvaluationPlan, victims: Iterable[str] = ()) -> str:
    """The plan as JSON text for the report header (purifiers with all their settings)."""
    return json.dumps(
        {
            "methods": plan.methods,
            "purifiers": [repr(purifier) for purifier in plan.purifiers],
            "scenarios": [
                asdict(scenario) | {"name": scenario.name} for scenario in plan.scenarios
            ],
            "victims": list(victims),
            "budget": plan.budget.as_record(),
            "prompt": plan.prompt,
            "seed": plan.seed,
            "version": __version__,
        },
        indent=1,
        default=repr,
    )
