"""Answers of the human study, read back and folded into proportions with intervals.

Each participant's page saves one JSON file (schema in the README). ``read_answers`` checks every
file against the study's manifest (``human_study.read_study``): a file that cannot be read, is
not an answers file, belongs to another study or names trials the study does not have is left
out as a whole, with a one-sentence reason naming it; the others still count. Files of one
participant session (the same participant and seed, e.g. a partial download and the final one)
are merged, each trial counted once.

``fold`` then gives, per kind of trial (and mimicry variant), for each pair of methods the share
of answers that chose each, and per method the share of its trials it won overall and against
the noise control. Every share has a 95 % interval from ``statistics.clustered_proportion``,
which resamples participants (their answers are correlated), widened to at least the Wilson
interval of the answers.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .grid import NOISE_CONTROL
from .human_study import ANSWERS_FORMAT, FIDELITY, MANIFEST, QUESTIONS, VERSION, Study
from .statistics import Proportion, clustered_proportion

#: What "chosen" means for each kind, and which way is good for the protection.
READINGS = {
    "naturalness": "chosen as more natural (higher: the protection is less visible)",
    "fidelity": "mimicry chosen as closer to the original (lower: stronger protection)",
}


@dataclass(frozen=True)
class Session:
    """One participant's sitting: their id, the page's seed and answers (trial id → answer)."""

    participant: str
    seed: int
    files: tuple[str, ...]
    answers: dict[str, dict]


@dataclass
class Collected:
    """The sessions read, and a sentence per file left out or worth knowing about."""

    sessions: list[Session] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PairResult:
    """``first`` against ``second``: the share of answers choosing ``first``."""

    first: str
    second: str
    first_chosen: Proportion


@dataclass(frozen=True)
class MethodResult:
    """A method's share of wins over all its trials, and against the noise control."""

    method: str
    overall: Proportion | None
    against_noise: Proportion | None


@dataclass(frozen=True)
class Group:
    """The results of one kind of trial (and, for fidelity, one mimicry variant)."""

    kind: str
    variant: str
    question: str
    reading: str
    pairs: list[PairResult]
    methods: list[MethodResult]
    participants: int
    answers: int
    median_response_ms: float | None


@dataclass(frozen=True)
class HumanResults:
    """Everything the report shows of the human study."""

    study: str
    participants: int
    answers: int
    files: int
    groups: list[Group]
    notes: list[str]


def answer_files(paths: list[Path]) -> list[Path]:
    """Named files as given, folders expanded into their ``*.json`` (sorted, not recursive).

    A folder's manifest (``human-study.json``) is skipped: an answers folder may be the
    evaluation's own output folder.

    Raises:
        ValueError: a path that does not exist, or folders without JSON files.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in sorted(path.glob("*.json")) if p.name != MANIFEST)
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such answers file or folder")
    if not files:
        raise ValueError(f"no answers files (*.json) in {', '.join(map(str, paths))}")
    return files


def read_answers(files: list[Path], study: Study) -> Collected:
    """Read every answers file against ``study``; bad files are refused, each with a reason."""
    collected = Collected()
    sessions: dict[tuple[str, int], Session] = {}
    trials = study.by_id()
    for path in files:
        try:
            participant, seed, answers = _read_file(path, study, trials)
        except ValueError as error:
            collected.refused.append(str(error))
            continue
        key = (participant, seed)
        if key in sessions:
            earlier = sessions[key]
            clash = [
                trial
                for trial, answer in answers.items()
                if trial in earlier.answers and earlier.answers[trial]["choice"] != answer["choice"]
            ]
            if clash:
                collected.refused.append(
                    f"{path}: participant {participant!r} (seed {seed}) answered trial "
                    f"{clash[0]} differently in {earlier.files[0]}; left out"
                )
                continue
            answers = earlier.answers | answers
            sessions[key] = Session(participant, seed, (*earlier.files, str(path)), answers)
        else:
            sessions[key] = Session(participant, seed, (str(path),), answers)
    collected.sessions = list(sessions.values())
    by_person: dict[str, list[Session]] = defaultdict(list)
    for session in collected.sessions:
        by_person[session.participant].append(session)
    for participant, several in by_person.items():
        if len(several) > 1:
            files = ", ".join(file for session in several for file in session.files)
            collected.notes.append(
                f"participant {participant!r} sat {len(several)} sessions ({files}); their "
                "answers count as one participant's"
            )
    unfinished = [s for s in collected.sessions if len(s.answers) < len(study.trials)]
    if unfinished:
        counts = ", ".join(f"{s.participant!r} {len(s.answers)}" for s in unfinished)
        collected.notes.append(
            f"{len(unfinished)} session(s) did not answer all {len(study.trials)} trials "
            f"(answered: {counts}); their answers count"
        )
    return collected


def _read_file(path: Path, study: Study, trials: dict) -> tuple[str, int, dict[str, dict]]:
    """(participant, seed, trial id → answer) of one file.

    Raises:
        ValueError: one sentence naming the file and what is wrong with it.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != ANSWERS_FORMAT:
        raise ValueError(f'{path}: not a study answers file (no "format": "{ANSWERS_FORMAT}")')
    if document.get("version") != VERSION:
        raise ValueError(
            f"{path}: answers of schema version {document.get('version')!r}; this version of "
            f"mimicshield reads version {VERSION}"
        )
    if document.get("study") != study.id:
        raise ValueError(
            f"{path}: answers for study {document.get('study')!r}, but the study page here is "
            f"{study.id!r}; left out (answers of different studies are never mixed)"
        )
    participant, seed = document.get("participant"), document.get("seed")
    if not isinstance(participant, str) or not participant.strip():
        raise ValueError(f"{path}: no participant id")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{path}: the seed must be an integer, got {seed!r}")
    answers = document.get("answers")
    if not isinstance(answers, list):
        raise ValueError(f'{path}: "answers" must be a list')
    by_trial: dict[str, dict] = {}
    for index, answer in enumerate(answers, start=1):
        problem = _answer_problem(answer, trials)
        if problem:
            raise ValueError(f"{path}: answer {index} {problem}")
        if answer["trial"] in by_trial:
            raise ValueError(f"{path}: trial {answer['trial']} is answered twice")
        by_trial[answer["trial"]] = answer
    return participant.strip(), seed, by_trial


def _answer_problem(answer: object, trials: dict) -> str | None:
    """What is wrong with one answer, or ``None``."""
    if not isinstance(answer, dict):
        return "is not an object"
    trial = trials.get(answer.get("trial"))
    if trial is None:
        return f"names trial {answer.get('trial')!r}, which this study does not have"
    if answer.get("kind") != trial.kind:
        return f"says trial {trial.id} is {answer.get('kind')!r}; the study says {trial.kind!r}"
    for name in ("choice", "left"):
        if answer.get(name) not in ("a", "b"):
            return f'has "{name}": {answer.get(name)!r}; expected "a" or "b"'
    time = answer.get("response_ms")
    if not isinstance(time, (int, float)) or isinstance(time, bool) or not time >= 0:
        return f'has "response_ms": {time!r}; expected a number of milliseconds ≥ 0'
    return None


def fold(study: Study, collected: Collected, files: int) -> HumanResults:
    """Proportions with intervals per kind (and variant), method pair and method.

    Args:
        study: the manifest the answers were read against.
        collected: what ``read_answers`` kept.
        files: how many files were given (for the report's counts).
    """
    # Per participant (the cluster) and group: (chosen method, other method) of each answer.
    choices: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    trials = study.by_id()
    for session in collected.sessions:
        for trial_id, answer in session.answers.items():
            trial = trials[trial_id]
            chosen = trial.a if answer["choice"] == "a" else trial.b
            other = trial.b if answer["choice"] == "a" else trial.a
            group = (trial.kind, trial.variant)
            choices[group][session.participant].append((chosen, other))
            times[group].append(float(answer["response_ms"]))
    order = {method: index for index, method in enumerate(study.methods)}
    groups = []
    for kind, variant in sorted(choices, key=lambda g: (g[0] == FIDELITY, g[1])):
        by_person = choices[(kind, variant)]
        pairs = sorted(
            {tuple(sorted(pair, key=order.__getitem__)) for a in by_person.values() for pair in a},
            key=lambda pair: (order[pair[0]], order[pair[1]]),
        )
        pair_results = [
            PairResult(first, second, _share(by_person, first, against=second))
            for first, second in pairs
        ]
        methods = [m for m in study.methods if any(m in pair for pair in pairs)]
        method_results = [
            MethodResult(
                method,
                _share(by_person, method),
                None if method == NOISE_CONTROL else _share(by_person, method, NOISE_CONTROL),
            )
            for method in methods
        ]
        groups.append(
            Group(
                kind,
                variant,
                QUESTIONS[kind],
                READINGS[kind],
                pair_results,
                method_results,
                participants=len(by_person),
                answers=sum(map(len, by_person.values())),
                median_response_ms=statistics.median(times[(kind, variant)]),
            )
        )
    participants = {session.participant for session in collected.sessions}
    return HumanResults(
        study=study.id,
        participants=len(participants),
        answers=sum(len(session.answers) for session in collected.sessions),
        files=files,
        groups=groups,
        notes=[*collected.refused, *collected.notes],
    )


def _share(
    by_person: dict[str, list[tuple[str, str]]], method: str, against: str | None = None
) -> Proportion | None:
    """Share of the answers that chose ``method``, among those that offered it.

    Args:
        by_person: participant → (chosen method, other method) per answer.
        method: the method whose wins are counted.
        against: only trials against this method; ``None``: against any.
    """
    clusters = []
    for answers in by_person.values():
        offered = [
            chosen
            for chosen, other in answers
            if method in (chosen, other) and (against is None or against in (chosen, other))
        ]
        clusters.append((sum(chosen == method for chosen in offered), len(offered)))
    return clustered_proportion(clusters)
