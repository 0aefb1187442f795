"""``human-study.html``: the paper's human evaluation as a two-alternative forced-choice page.

Two kinds of trial, built from the images an evaluation cached:

- ``naturalness``: one source image protected by two methods (the noise control among them),
  side by side: "which looks more natural, less altered?";
- ``fidelity``: the clean original between two mimicry outputs of one variant (e.g. SDEdit at
  strength 0.5) of that image protected by two methods: "which looks more like the original?".

The page is one file that needs nothing else: images embedded as ``data:`` URIs (PNG, so the
perturbation is shown as posted; each file once however many trials show it), script and style
inline, and a content security policy that forbids every other source, so it works opened from
disk and cannot reach a network. Method names never reach the page: a trial offers options
``a`` and ``b``, and only the manifest ``human-study.json`` beside it (which the participant
never gets) says which method each is. The study id, a digest of the trials and of the exact
image bytes shown, ties every answers file to the manifest it must be read with
(``human_answers``). The answers schema is in the README, "Simulating mimicry and measuring
protection".

Trials are chosen deterministically from ``StudyOptions.seed``: a sample of source images; the
trial budget split evenly between the two kinds; within a kind, round robin over (variant, method
pair), each pair seeing the same images in the same order (a balanced design: every pair is
judged on the same pictures). The page randomises trial order and sides per participant.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2
import markupsafe
from PIL import Image

from ..filesystem import atomic_write_text
from ..mimicry import SCENARIOS
from . import summary
from .grid import _digest

PAGE = "human-study.html"
MANIFEST = "human-study.json"
#: ``format`` of the manifest and of the answers files; ``version`` of both schemas.
STUDY_FORMAT = "mimicshield-human-study"
ANSWERS_FORMAT = "mimicshield-human-answers"
VERSION = 1
#: The fields of an answers file and of each of its answers (the README documents them).
ANSWERS_FIELDS = (
    "format", "version", "study", "participant", "seed", "started", "exported", "trials",
    "complete", "answers",
)  # fmt: skip
ANSWER_FIELDS = ("trial", "kind", "position", "left", "choice", "side", "response_ms", "time")
NATURALNESS, FIDELITY = "naturalness", "fidelity"
#: The question each kind of trial asks, as the page shows it.
QUESTIONS = {
    NATURALNESS: "Which picture looks more natural, less altered?",
    FIDELITY: "Which picture, left or right, looks more like the original in the middle?",
}
TEMPLATE = "human-study.html.j2"


class StudyError(ValueError):
    """A study cannot be made or read; the message names the file or value."""


@dataclass(frozen=True)
class StudyOptions:
    """How large a study page to make.

    Attributes:
        trials: at most this many trials (a participant needs roughly 3–5 s per trial).
        images: source images drawn from (a seeded sample); fewer means a smaller page.
        max_side: pixels; larger images are downscaled (Lanczos) to fit for embedding, which
            also hides part of the perturbation: keep the images' own size (0) for a
            naturalness study where the page allows it.
        variants: mimicry variants of the fidelity trials (e.g. ``sdedit@0.5``); empty: the
            strongest multi-step SDEdit and every inpainting variant evaluated.
        seed: of the choice of images and trials.
    """

    trials: int = 60
    images: int = 6
    max_side: int = 512
    variants: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or self.images < 1 or self.max_side < 0:
            raise StudyError(
                f"a study needs trials ≥ 1, images ≥ 1 and max side ≥ 0 pixels, got "
                f"{self.trials}, {self.images} and {self.max_side}"
            )


@dataclass(frozen=True)
class Trial:
    """One two-alternative trial.

    Attributes:
        id: opaque, ``t01``, ``t02``, ...
        kind: ``naturalness`` or ``fidelity``.
        image: the source image's name.
        variant: the mimicry variant; ``""`` for naturalness.
        a: the method of option ``a``.
        b: the method of option ``b``.
        files: ``a``, ``b`` and, for fidelity, ``reference``: paths relative to the folder.
    """

    id: str
    kind: str
    image: str
    variant: str
    a: str
    b: str
    files: dict[str, str]


@dataclass(frozen=True)
class Study:
    """A study as its manifest holds it: its id, methods (noise control last) and trials."""

    id: str
    methods: tuple[str, ...]
    victim: str
    trials: tuple[Trial, ...]

    def by_id(self) -> dict[str, Trial]:
        """Trial id → trial."""
        return {trial.id: trial for trial in self.trials}


@dataclass(frozen=True)
class StudyPage:
    """What ``write_study`` wrote: the page, the manifest, the study and the page's size."""

    page: Path
    manifest: Path
    study: Study
    images: int
    size_bytes: int


def write_study(
    folder: Path, rows: list[dict], options: StudyOptions = StudyOptions()
) -> StudyPage:
    """Write ``folder/human-study.html`` and its manifest ``folder/human-study.json``.

    Args:
        folder: the evaluation's output folder, holding the cached images the rows refer to.
        rows: the evaluation's result rows (they say which methods, images and variants exist).
        options: how many trials and images, and how large.

    Raises:
        StudyError: fewer than two methods, a variant that was not evaluated, or no images.
    """
    trials = plan_trials(folder, rows, options)
    # 1. Every file once, as PNG bytes, under an opaque id in order of first use.
    paths = list(dict.fromkeys(path for trial in trials for path in trial.files.values()))
    encoded = {path: _embedded_png(folder / path, options.max_side) for path in paths}
    ids = {path: f"i{index}" for index, path in enumerate(paths)}
    # 2. The id: what was asked and exactly what was shown.
    study_id = _digest(
        json.dumps(QUESTIONS, sort_keys=True),
        json.dumps([_trial_record(trial) for trial in trials], sort_keys=True),
        *(encoded[path] for path in paths),
    )
    study = Study(study_id, tuple(_methods(rows)), _victim(rows), tuple(trials))
    # 3. The page: the trials as opaque ids only, then the manifest that decodes them.
    data = {
        "format": ANSWERS_FORMAT,
        "version": VERSION,
        "study": study_id,
        "questions": QUESTIONS,
        "trials": [
            {"id": t.id, "kind": t.kind} | {role: ids[path] for role, path in t.files.items()}
            for t in trials
        ],
        "images": {
            ids[path]: "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            for path, data in encoded.items()
        },
    }
    page = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            trials=len(trials),
            # "<" escaped, so no text inside the JSON can close the script element.
            data=markupsafe.Markup(json.dumps(data).replace("<", "\\u003c")),
        )
    )
    page_path, manifest_path = folder / PAGE, folder / MANIFEST
    atomic_write_text(page_path, page)
    atomic_write_text(manifest_path, json.dumps(_manifest(study, options), indent=1))
    return StudyPage(page_path, manifest_path, study, len(paths), page_path.stat().st_size)


def plan_trials(folder: Path, rows: list[dict], options: StudyOptions) -> list[Trial]:
    """The trials, chosen as the module says, from the images that exist under ``folder``.

    Raises:
        StudyError: fewer than two methods, a variant that was not evaluated, or no trials.
    """
    methods = _methods(rows)
    if len(methods) < 2:
        raise StudyError(
            f"a human study compares methods two by two; the evaluation has {len(methods)}"
        )
    variants = _fidelity_variants(rows, options.variants)
    names = list(dict.fromkeys(str(r["image"]) for r in rows if r["scenario"] == "visibility"))
    rng = random.Random(options.seed)
    images = rng.sample(names, min(options.images, len(names)))
    victim = _victim(rows)
    pairs = list(itertools.combinations(methods, 2))

    def files(kind: str, variant: str, image: str, pair: tuple[str, str]) -> dict[str, str]:
        if kind == NATURALNESS:
            return {
                option: f"protected/{m}/{image}.png" for option, m in zip("ab", pair, strict=True)
            }
        shown = {
            option: f"mimicry/{victim}/{m}/none/{variant}/{image}.png"
            for option, m in zip("ab", pair, strict=True)
        }
        return shown | {"reference": f"clean/{image}.png"}

    # 1. Candidates per kind and stratum (variant, pair), images in the sampled order.
    strata: dict[str, list[list[tuple]]] = {NATURALNESS: [], FIDELITY: []}
    for kind, kind_variants in ((NATURALNESS, [""]), (FIDELITY, variants)):
        for variant, pair in itertools.product(kind_variants, pairs):
            found = [
                (kind, variant, image, pair)
                for image in images
                if all(
                    (folder / path).is_file() for path in files(kind, variant, image, pair).values()
                )
            ]
            if found:
                strata[kind].append(found)
    # 2. The budget split evenly between the kinds; what one cannot use goes to the other.
    available = {kind: sum(map(len, groups)) for kind, groups in strata.items()}
    quota = dict.fromkeys(strata, 0)
    for _ in range(min(options.trials, sum(available.values()))):
        open_kinds = [kind for kind in strata if quota[kind] < available[kind]]
        quota[min(open_kinds, key=lambda kind: quota[kind])] += 1
    # 3. Round robin over the strata of each kind.
    chosen: list[tuple] = []
    for kind, groups in strata.items():
        queue, picked = [list(group) for group in groups], []
        while len(picked) < quota[kind]:  # one round: the next image of every stratum
            picked.extend(group.pop(0) for group in queue if group)
        chosen.extend(picked[: quota[kind]])
    if not chosen:
        raise StudyError(f"no images for a human study under {folder}: run the evaluation first")
    trials = []
    width = max(2, len(str(len(chosen))))
    for index, (kind, variant, image, pair) in enumerate(chosen, start=1):
        # Which method is option a is drawn too, so that "a" says nothing about the method.
        a, b = pair[::-1] if rng.random() < 0.5 else pair
        shown = files(kind, variant, image, (a, b))
        trials.append(Trial(f"t{index:0{width}d}", kind, image, variant, a, b, shown))
    return trials


def read_study(folder: Path) -> Study:
    """The study whose manifest is ``folder/human-study.json``.

    Raises:
        StudyError: no manifest, or not one this version reads (the message names the file).
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise StudyError(
            f"{path} does not exist: make the study page first (evaluate ... --human-study)"
        )
    try:
        document = json.loads(path.read_text())
        if document.get("format") != STUDY_FORMAT or document.get("version") != VERSION:
            raise StudyError(f"{path} is not a version-{VERSION} mimicshield study manifest")
        trials = tuple(Trial(**trial) for trial in document["trials"])
        return Study(document["study"], tuple(document["methods"]), document["victim"], trials)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, StudyError):
            raise
        raise StudyError(f"{path} is not a readable study manifest ({error})") from None


def _manifest(study: Study, options: StudyOptions) -> dict[str, object]:
    return {
        "format": STUDY_FORMAT,
        "version": VERSION,
        "study": study.id,
        "page": PAGE,
        "questions": QUESTIONS,
        "methods": list(study.methods),
        "victim": study.victim,
        "options": asdict(options),
        "trials": [asdict(trial) for trial in study.trials],
    }


def _trial_record(trial: Trial) -> dict[str, object]:
    return {key: value for key, value in asdict(trial).items() if key != "files"}


def _methods(rows: list[dict]) -> list[str]:
    """The protected methods (noise control last), as the visibility rows list them."""
    return summary.methods([row for row in rows if row["scenario"] == "visibility"])


def _victim(rows: list[dict]) -> str:
    """The first victim, whose mimicry the fidelity trials show (the report's grid shows it too)."""
    return next(iter(summary.victims(rows)), "")


def _fidelity_variants(rows: list[dict], asked: Iterable[str]) -> list[str]:
    """The variants asked for, checked; by default the strongest SDEdit and every inpainting one.

    Raises:
        StudyError: a variant asked for that no per-image scenario evaluated without purifier.
    """
    per_image = {name for name, scenario in SCENARIOS.items() if scenario.per_image}
    evaluated = list(
        dict.fromkeys(
            str(row["variant"])
            for row in rows
            if row["scenario"] in per_image and row["purifier"] == "none"
        )
    )
    asked = list(asked)
    if asked:
        unknown = [variant for variant in asked if variant not in evaluated]
        if unknown:
            raise StudyError(
                f"variant {', '.join(map(repr, unknown))} was not evaluated; evaluated: "
                f"{', '.join(evaluated) or 'none'}"
            )
        return asked
    sdedit = [variant for variant in evaluated if variant.startswith("sdedit@")]
    strongest = [max(sdedit, key=lambda v: float(v.split("@")[1]))] if sdedit else []
    return strongest + [variant for variant in evaluated if variant.startswith("inpaint")]


def _embedded_png(path: Path, max_side: int) -> bytes:
    """The PNG's bytes as stored, or re-encoded downscaled when a side exceeds ``max_side``."""
    with Image.open(path) as image:
        if max_side == 0 or max(image.size) <= max_side:
            return path.read_bytes()
        smaller = image.convert("RGB")
        smaller.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    smaller.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment, built on first use (importing the module reads no file)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mimicshield.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
