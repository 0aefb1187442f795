"""The human study: its page, reading answers back, folding them into the report, the command.

The page in a real browser is checked in test_web.py, with the session's one Chromium.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mimicshield.evaluation import (
    StudyError,
    StudyOptions,
    answer_files,
    fold_answers,
    read_answers,
    read_study,
    write_study,
)
from mimicshield.evaluation.human_study import (
    ANSWER_FIELDS,
    ANSWERS_FIELDS,
    ANSWERS_FORMAT,
    MANIFEST,
    PAGE,
)

METHODS = ("sds-", "advdm", "noise")
PAIRS = {frozenset(pair) for pair in itertools.combinations(METHODS, 2)}


class _Page(HTMLParser):
    """The visible text, every attribute value and the script elements of a page."""

    def __init__(self):
        super().__init__()
        self.text, self.attributes, self.scripts, self._inside = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self._inside.append(tag)
        self.attributes.extend((tag, name, value or "") for name, value in attrs)

    def handle_endtag(self, tag):
        self._inside.pop()

    def handle_data(self, data):
        if self._inside and self._inside[-1] in ("script", "style"):
            if self._inside[-1] == "script":
                self.scripts.append(data)
        elif data.strip():
            self.text.append(data.strip())


def _parse(page_path):
    parser = _Page()
    parser.feed(page_path.read_text())
    data = next(json.loads(script) for script in parser.scripts if script.lstrip().startswith("{"))
    return parser, data


def _answers(study, participant, choose, seed=1, trials=None):
    """An answers document: ``choose(trial, participant)`` → the method chosen in that trial."""
    answers = []
    for position, trial in enumerate(trials or study.trials):
        chosen = choose(trial, participant)
        answers.append(
            {"trial": trial.id, "kind": trial.kind, "position": position, "left": "a",
             "choice": "a" if chosen == trial.a else "b", "side": "left", "response_ms": 900,
             "time": "2026-12-01T10:00:00.000Z"}
        )  # fmt: skip
    return {"format": ANSWERS_FORMAT, "version": 1, "study": study.id, "participant": participant,
            "seed": seed, "answers": answers}  # fmt: skip


def _write(folder, name, document):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(document) if isinstance(document, dict) else document)
    return path


# ---------------------------------------------------------------- the page


def test_the_page_is_self_contained_and_names_no_method(evaluation_folder):
    folder, rows = evaluation_folder(METHODS, ["cat", "dog", "owl"], ["sdedit@0.3", "sdedit@0.5"])
    written = write_study(folder, rows, StudyOptions(trials=100))
    study = written.study
    parser, data = _parse(written.page)
    html = written.page.read_text()

    # Nothing to fetch: no URL with a scheme other than data:, and a policy that forbids it.
    code = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"https?:|wss?:|url\(|@import|<link|<iframe|fetch\(", code)
    assert ("meta", "content", "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'") in parser.attributes  # fmt: skip
    assert all(not value or value.startswith("data:") for tag, name, value in parser.attributes
               if name in ("src", "href"))  # fmt: skip

    # Every image the trials use is embedded once, byte for byte the file it stands for.
    manifest = json.loads(written.manifest.read_text())
    for trial, shown in zip(manifest["trials"], data["trials"], strict=True):
        assert trial["id"] == shown["id"] and trial["kind"] == shown["kind"]
        for role, path in trial["files"].items():
            uri = data["images"][shown[role]]
            assert base64.b64decode(uri.split(",", 1)[1]) == (folder / path).read_bytes()
    assert written.images == len(data["images"]) == 3 * 3 + 3 * 3 + 3  # protected, mimicry, clean

    # The trials: every pair on every image, naturalness on the protected images, fidelity on
    # the strongest SDEdit with the clean original as reference.
    by_kind = {k: [t for t in study.trials if t.kind == k] for k in ("naturalness", "fidelity")}
    for trials in by_kind.values():
        assert Counter(frozenset((t.a, t.b)) for t in trials) == dict.fromkeys(PAIRS, 3)
        assert {t.image for t in trials} == {"cat", "dog", "owl"}
    for trial in by_kind["naturalness"]:
        assert trial.files == {m: f"protected/{getattr(trial, m)}/{trial.image}.png" for m in "ab"}
    for trial in by_kind["fidelity"]:
        assert (
            trial.variant == "sdedit@0.5" and trial.files["reference"] == f"clean/{trial.image}.png"
        )
        assert trial.files["a"] == f"mimicry/tiny/{trial.a}/none/sdedit@0.5/{trial.image}.png"

    # Method names nowhere a participant could see them, nor in the page's data (images aside).
    visible = " ".join(parser.text).lower()
    decoded = json.dumps({key: value for key, value in data.items() if key != "images"})
    for name in METHODS:
        assert name not in visible and name not in decoded
    assert "Which picture looks more natural" in decoded and "left or right" in decoded


def test_trials_are_capped_balanced_and_reproducible(evaluation_folder):
    folder, rows = evaluation_folder(METHODS, ["a", "b", "c", "d"], ["sdedit@0.3"])
    first = write_study(folder, rows, StudyOptions(trials=10, images=2))
    trials = first.study.trials
    kinds = Counter(trial.kind for trial in trials)
    assert kinds == {"naturalness": 5, "fidelity": 5}  # the budget split evenly
    for kind in kinds:  # round robin: pairs differ by at most one trial
        pairs = Counter(frozenset((t.a, t.b)) for t in trials if t.kind == kind)
        assert set(pairs) == PAIRS and max(pairs.values()) - min(pairs.values()) <= 1
    assert len({trial.image for trial in trials}) == 2
    assert len({trial.id for trial in trials}) == 10
    # Option a is not always the first method of the pair, so "a" says nothing.
    assert {trial.a for trial in trials} == set(METHODS)

    again = write_study(folder, rows, StudyOptions(trials=10, images=2))
    assert again.study == first.study
    other = write_study(folder, rows, StudyOptions(trials=10, images=2, seed=1))
    assert other.study.id != first.study.id
    # Fidelity trials only where both mimicry outputs exist; naturalness takes what remains.
    for path in (folder / "mimicry").rglob("*.png"):
        path.unlink()
    only = write_study(folder, rows, StudyOptions(trials=10, images=2))
    assert Counter(trial.kind for trial in only.study.trials) == {"naturalness": 6}


def test_large_images_are_downscaled_for_the_page_and_small_ones_kept(evaluation_folder):
    folder, rows = evaluation_folder(("sds-", "noise"), ["big"], ["sdedit@0.3"], size=(96, 64))
    _, data = _parse(write_study(folder, rows, StudyOptions(max_side=32)).page)
    sizes = set()
    for uri in data["images"].values():
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
            sizes.add(image.size)
    assert sizes == {(32, 21)}
    _, data = _parse(write_study(folder, rows, StudyOptions(max_side=0)).page)
    assert len(data["images"]) == 5


@pytest.mark.parametrize(
    "methods, options, message",
    [
        (("sds-",), StudyOptions(), "compares methods two by two; the evaluation has 1"),
        (METHODS, StudyOptions(variants=("sdedit@0.9",)), "'sdedit@0.9' was not evaluated"),
    ],
)
def test_a_study_that_cannot_be_made_says_why(evaluation_folder, methods, options, message):
    folder, rows = evaluation_folder(methods, ["a"], ["sdedit@0.3"])
    with pytest.raises(StudyError, match=re.escape(message)):
        write_study(folder, rows, options)
    with pytest.raises(StudyError, match="trials ≥ 1"):
        StudyOptions(trials=0)


# ---------------------------------------------------------------- answers folded in


@pytest.fixture
def study(evaluation_folder):
    folder, rows = evaluation_folder(METHODS, ["a", "b"], ["sdedit@0.3"])
    return folder, write_study(folder, rows, StudyOptions(trials=100)).study


def _prefer_sds_for_the_first_four(trial, participant):
    """Participants 0–3 always choose sds- when offered, 4–5 never; advdm beats noise always."""
    if "sds-" in (trial.a, trial.b):
        other = trial.b if trial.a == "sds-" else trial.a
        return "sds-" if int(participant[1:]) < 4 else other
    return "advdm"


def test_folded_shares_are_the_counts_by_hand(study, tmp_path):
    folder, key = study
    people = [f"p{index}" for index in range(6)]
    files = [
        _write(tmp_path / "answers", f"{p}.json", _answers(key, p, _prefer_sds_for_the_first_four))
        for p in people
    ]
    collected = read_answers(answer_files([tmp_path / "answers"]), read_study(folder))
    assert collected.refused == [] and collected.notes == []
    results = fold_answers(key, collected, len(files))
    assert (results.participants, results.answers, results.files) == (6, 6 * 12, 6)
    naturalness, fidelity = results.groups
    assert (naturalness.kind, fidelity.kind, fidelity.variant) == (
        "naturalness",
        "fidelity",
        "sdedit@0.3",
    )
    for group in results.groups:
        # Per pair: 2 images × 6 people = 12 answers.
        shares = {(p.first, p.second): p.first_chosen for p in group.pairs}
        assert list(shares) == [("sds-", "advdm"), ("sds-", "noise"), ("advdm", "noise")]
        assert shares[("sds-", "advdm")].mean == pytest.approx(8 / 12)  # 4 people × 2 images
        assert shares[("sds-", "noise")].mean == pytest.approx(8 / 12)
        assert shares[("advdm", "noise")].mean == 1 and shares[("advdm", "noise")].count == 12
        methods = {m.method: m for m in group.methods}
        # sds- wins 16 of its 24; advdm 2·2 (against sds-) + 12 (against noise) of 24; noise 4/24.
        assert methods["sds-"].overall.mean == pytest.approx(16 / 24)
        assert methods["advdm"].overall.mean == pytest.approx(16 / 24)
        assert methods["noise"].overall.mean == pytest.approx(4 / 24)
        assert methods["advdm"].against_noise.mean == 1 and methods["noise"].against_noise is None
        for share in [*shares.values(), *(m.overall for m in methods.values())]:
            assert 0 <= share.low <= share.mean <= share.high <= 1 and share.participants == 6
        assert group.median_response_ms == 900

    # Four times the people answering alike: the same shares, narrower intervals.
    more = [
        _answers(key, f"p{index}", _prefer_sds_for_the_first_four, seed=copy)
        for copy in range(4)
        for index in range(6)
    ]
    for index, document in enumerate(more):
        document["participant"] = f"p{index % 6}-{index}"
        _write(tmp_path / "more", f"{index}.json", document)
    many = fold_answers(key, read_answers(answer_files([tmp_path / "more"]), key), 24)
    few_share, many_share = (
        results.groups[0].pairs[0].first_chosen,
        many.groups[0].pairs[0].first_chosen,
    )
    assert many_share.mean == few_share.mean and many_share.participants == 24
    assert many_share.high - many_share.low < few_share.high - few_share.low


def test_bad_answer_files_are_refused_by_name_and_the_others_count(study, tmp_path):
    folder, key = study
    good = _answers(key, "p0", _prefer_sds_for_the_first_four)
    answers = tmp_path / "answers"
    bad = {
        "not-json.json": ("{ nope", "not JSON"),
        "list.json": ("[1, 2]", 'not a study answers file (no "format"'),
        "future.json": (good | {"version": 2}, "schema version 2; this version"),
        "other-study.json": (good | {"study": "0123456789abcdef"},
                             "answers for study '0123456789abcdef', but the study page here is"),
        "no-one.json": (good | {"participant": " "}, "no participant id"),
        "unknown-trial.json": (good | {"answers": [good["answers"][0] | {"trial": "t99"}]},
                               "answer 1 names trial 't99', which this study does not have"),
        "bad-choice.json": (good | {"answers": [good["answers"][0] | {"choice": "left"}]},
                            'answer 1 has "choice": \'left\'; expected "a" or "b"'),
        "twice.json": (good | {"answers": good["answers"][:1] * 2}, "is answered twice"),
    }  # fmt: skip
    for name, (document, _) in bad.items():
        _write(answers, name, document)
    _write(answers, "good.json", good)
    collected = read_answers(answer_files([answers]), key)
    assert len(collected.refused) == len(bad)
    for name, (_, message) in bad.items():
        assert any(f"{answers / name}: " in r and message in r for r in collected.refused), name
    results = fold_answers(key, collected, len(bad) + 1)
    assert results.participants == 1 and results.answers == 12
    assert any("not JSON" in note for note in results.notes)  # the report says so too
    with pytest.raises(ValueError, match="missing.json: no such answers file or folder"):
        answer_files([tmp_path / "missing.json"])
    with pytest.raises(StudyError, match=f"{MANIFEST} does not exist"):
        read_study(tmp_path)


def test_sessions_merge_across_files_and_unfinished_ones_are_noted(study, tmp_path):
    _, key = study
    answers = tmp_path / "answers"
    full = _answers(key, "p0", _prefer_sds_for_the_first_four)
    _write(answers, "1-partial.json", full | {"answers": full["answers"][:5]})
    _write(answers, "2-full.json", full)  # the same session downloaded again at the end
    _write(answers, "3-again.json", _answers(key, "p0", _prefer_sds_for_the_first_four, seed=7,
                                             trials=key.trials[:3]))  # fmt: skip
    first = full["answers"][0]
    flipped = full | {"answers": [first | {"choice": "b" if first["choice"] == "a" else "a"}]}
    _write(answers, "4-clash.json", flipped)
    collected = read_answers(answer_files([answers]), key)
    assert [len(s.answers) for s in collected.sessions] == [12, 3]
    assert len(collected.refused) == 1 and "answered trial" in collected.refused[0]
    assert "4-clash.json" in collected.refused[0]
    assert any("'p0' sat 2 sessions" in note for note in collected.notes)
    assert any("did not answer all 12 trials" in note for note in collected.notes)
    results = fold_answers(key, collected, 4)
    assert results.participants == 1 and results.answers == 15


# ---------------------------------------------------------------- the command line


def test_evaluate_writes_the_page_and_folds_answers_into_the_report(
    run_cli, image_folder, tiny_model_dir, tmp_path, capsys
):
    inputs = image_folder("one.png", "two.png")
    out = tmp_path / "eval"
    common = ["evaluate", inputs, "-o", out, "--model", tiny_model_dir, "--device", "cpu",
              "--methods", "sds-,noise", "--steps", "2", "--eps", "8", "--strengths", "0.3",
              "--num-inference-steps", "2", "--no-one-step", "--metrics", "psnr"]  # fmt: skip
    assert run_cli(*common, "--human-study", "--human-trials", "6") == 0
    # Per image: one naturalness and one fidelity trial; 2 protected, 2 mimicry, 1 clean image.
    assert "4 trials, 10 images" in capsys.readouterr().out
    assert (out / PAGE).is_file() and f'href="{PAGE}"' in (out / "report.html").read_text()
    key = read_study(out)
    assert {(t.kind, t.variant) for t in key.trials} == {
        ("naturalness", ""),
        ("fidelity", "sdedit@0.3"),
    }

    # Two participants: one always prefers sds-, one always noise; and a file of another study.
    answers = tmp_path / "answers"
    for person, method in (("p0", "sds-"), ("p1", "noise")):
        _write(answers, f"{person}.json", _answers(key, person, lambda trial, p, m=method: m))
    _write(answers, "old.json", _answers(key, "p2", lambda t, p: "noise") | {"study": "f" * 16})
    assert run_cli(*common, "--human-answers", answers) == 1
    captured = capsys.readouterr()
    assert f"{answers / 'old.json'}: answers for study 'ffffffffffffffff'" in captured.err
    assert "8 answers of 2 participants folded in" in captured.out
    report = (out / "report.html").read_text()
    assert "2 participants, 8\nanswers, from 3 files" in report
    # Per kind, the one pair: one of two people chose sds-, grey with so few people.
    pair = r'<td class="name">sds-</td><td class="name">noise</td><td class="like-noise">50% \['
    assert len(re.findall(pair, report)) == 2

    # Without the page's key, answers are refused before any work.
    (out / MANIFEST).unlink()
    assert run_cli(*common, "--human-answers", answers / "p0.json") == 2
    assert f"{out / MANIFEST} does not exist" in capsys.readouterr().err
    assert run_cli(*common, "--human-study", "--human-variants", "sdedit@0.7") == 2
    assert "'sdedit@0.7' is not evaluated; the per-image variants here are sdedit@0.3" in (
        capsys.readouterr().err
    )


def test_the_readme_documents_every_field_of_an_answers_file():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("#### The answers file") :]
    for field in (*ANSWERS_FIELDS, *ANSWER_FIELDS):
        assert f"`{field}`" in section, field
