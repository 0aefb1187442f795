"""Speed presets: what each builds, what the user may change, and what the record says."""

from __future__ import annotations

import json

import pytest
import torch

from mimicshield import METHODS, Budget, Staged, protect
from mimicshield.presets import DEFAULT_SPEED, SPEED_PRESETS, PresetStage, SpeedPreset
from mimicshield.updates import CosineDecay, LinearDecay, MomentumUpdate

TWO_STAGES = SpeedPreset(
    "two-stages",
    (PresetStage("pca-", 2, 4), PresetStage("sds-", 3, 2, step_schedule=LinearDecay(0.5))),
)


def test_the_default_is_the_reference_and_builds_the_papers_sds_minus():
    assert DEFAULT_SPEED == "reference"
    assert SPEED_PRESETS["reference"].build() == METHODS["sds-"]()
    assert SPEED_PRESETS["reference"].build(eps_255=8, prompt="a painting") == METHODS["sds-"](
        budget=Budget.from_255(8, 1, 100), prompt="a painting"
    )


@pytest.mark.parametrize("name", list(SPEED_PRESETS))
def test_every_preset_builds_a_protection_within_its_budget(name, tiny_model, images):
    preset = SPEED_PRESETS[name]
    protection = preset.build(eps_255=6)
    assert protection.budget.eps == 6 / 255
    assert protection.budget.steps == sum(stage.steps for stage in preset.stages)
    protected = protect(images, protection, tiny_model, generator=torch.Generator().manual_seed(0))
    assert (protected - images).abs().max() <= 6 / 255 + 1e-6
    assert not torch.equal(protected, images)
    record = preset.as_record()
    assert record["name"] == name and len(record["stages"]) == len(preset.stages)
    for stage in record["stages"]:
        assert {"method", "steps", "step_size_255", "update", "step_schedule", "scale"} <= set(
            stage
        )


def test_explicit_settings_replace_a_one_stage_presets():
    preset = SPEED_PRESETS["reference"]
    built = preset.build(method="advdm", steps=7, step_size_255=3, update=MomentumUpdate())
    assert built == METHODS["advdm"](budget=Budget.from_255(16, 3, 7), update=MomentumUpdate())
    assert preset.build(steps=None) == preset.build()  # None means "not given"
    record = preset.as_record({"steps": 7, "update": MomentumUpdate(), "method": None})
    assert record["overridden"] == {"steps": 7, "update": {"rule": "momentum", "decay": 1.0}}


def test_a_staged_preset_keeps_its_stages_and_refuses_stage_settings():
    built = TWO_STAGES.build(eps_255=8, prompt="a painting", noise_samples=2)
    assert isinstance(built, Staged) and built.name == "pca- then sds-"
    first, second = (stage.method for stage in built.stages)
    assert first.budget == Budget.from_255(8, 4, 2) and second.budget == Budget.from_255(8, 2, 3)
    assert second.step_schedule == LinearDecay(0.5)
    assert {first.prompt, second.prompt} == {"a painting"} and second.noise_samples == 2
    with pytest.raises(ValueError, match="steps cannot be changed in the preset 'two-stages'"):
        TWO_STAGES.build(steps=5)
    with pytest.raises(ValueError, match="unknown preset settings"):
        TWO_STAGES.build(colour="red")


def test_a_preset_below_full_size_is_staged():
    half = SpeedPreset("half", (PresetStage("sds-", 4, 2, step_schedule=CosineDecay(), scale=0.5),))
    built = half.build()
    assert isinstance(built, Staged) and built.stages[0].scale == 0.5
    assert half.describe() == "sds- 4 × 2/255 (cosine, at 0.5× size)"


def test_protect_speed_records_the_preset_and_the_flags_that_replaced_its_values(
    image_folder, tmp_path, run_cli, tiny_model_dir
):
    folder = image_folder("photo.jpg")
    out = tmp_path / "out"
    code = run_cli(
        "protect", folder, "-o", out, "--model", tiny_model_dir, "--device", "cpu",
        "--speed", "reference", "--steps", "2", "--step-size", "3", "--eps", "6",
        "--update", "adam", "--step-decay", "cosine",
    )  # fmt: skip
    assert code == 0
    record = json.loads(next(out.glob("protect-*.json")).read_text())
    preset = record["speed_preset"]
    assert preset["name"] == "reference"
    assert preset["stages"] == [SPEED_PRESETS["reference"].stages[0].as_record()]
    assert preset["overridden"] == {
        "steps": 2,
        "step_size_255": 3.0,
        "update": {"rule": "adam", "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
        "step_schedule": {"schedule": "cosine", "final": 0.1},
    }
    method = record["method"]
    assert (method["method"], method["steps"], method["step_size_255"]) == ("sds-", 2, 3.0)
    assert method["update"]["rule"] == "adam" and method["step_schedule"]["schedule"] == "cosine"


def test_protect_without_speed_records_no_preset(image_folder, tmp_path, run_cli, tiny_model_dir):
    folder = image_folder("photo.jpg")
    out = tmp_path / "out"
    args = ("--model", tiny_model_dir, "--device", "cpu", "--steps", "1", "--eps", "4")
    assert run_cli("protect", folder, "-o", out, *args) == 0
    record = json.loads(next(out.glob("protect-*.json")).read_text())
    assert record["speed_preset"] is None
    assert record["method"]["update"] == {"rule": "sign"}
    assert record["method"]["step_schedule"] == {"schedule": "constant"}


def test_protect_speed_fast_runs_the_presets_method(
    image_folder, tmp_path, run_cli, tiny_model_dir
):
    folder = image_folder("photo.jpg")
    out = tmp_path / "out"
    args = ("--model", tiny_model_dir, "--device", "cpu", "--eps", "6")
    assert run_cli("protect", folder, "-o", out, "--speed", "fast", *args) == 0
    record = json.loads(next(out.glob("protect-*.json")).read_text())
    assert record["speed_preset"]["name"] == "fast" and record["speed_preset"]["overridden"] == {}
    stage = SPEED_PRESETS["fast"].stages[0]
    assert (record["method"]["method"], record["method"]["steps"]) == (stage.method, stage.steps)
    assert record["method"]["eps_255"] == 6 and record["images"][0]["linf_255"] <= 6
