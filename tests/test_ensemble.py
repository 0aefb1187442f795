"""Ensembles: protecting against several models at once, across families (Python and CLI)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield import METHODS, Budget, Ensemble, LatentDiffusion, protect, protect_tiled
from mimicshield.methods.amortised import ProtectorMismatchError
from mimicshield.metrics import latent_shift
from mimicshield.mimicry import sdedit
from mimicshield.objectives import Conditioning, StepNoise, weighted_objective
from mimicshield.targets import resolve_target
from mimicshield.updates import SignUpdate

EPS = 8 / 255


@pytest.fixture(scope="module")
def models():
    """A UNet model (tiny, SD) and a transformer one (tiny-sd3, flow matching): two families."""
    return LatentDiffusion.random("tiny"), LatentDiffusion.random("tiny-sd3")


@pytest.fixture(scope="module")
def ensemble(models):
    return Ensemble.of(models, [3, 1])


@pytest.fixture
def pictures():
    """(2, 3, 32, 32) smooth random images in [0, 1]."""
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")


def _method(name: str, **changes):
    return METHODS[name](budget=Budget(eps=EPS, step_size=4 / 255, steps=2), **changes)


def _protect(images, method, model, seed=0):
    return protect(images, method, model, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["sds-", "mist"])
def test_ensemble_protects_within_budget_the_same_for_the_same_seed(name, ensemble, pictures):
    before = pictures.clone()
    method = _method(name)
    protected = _protect(pictures, method, ensemble)
    assert torch.equal(pictures, before), "the input must not change"
    assert protected.shape == pictures.shape and protected.dtype == pictures.dtype
    assert 0 < (protected - pictures).abs().max() <= EPS + 1e-6
    assert protected.min() >= 0 and protected.max() <= 1
    assert torch.equal(_protect(pictures, method, ensemble), protected)
    assert not torch.equal(_protect(pictures, method, ensemble, seed=1), protected)


def test_ensemble_differs_from_each_member_and_one_member_is_the_model(models, pictures):
    method = _method("sds-")
    both = _protect(pictures, method, Ensemble.of(models))
    for model in models:
        alone = _protect(pictures, method, model)
        assert not torch.equal(both, alone)
        assert torch.equal(_protect(pictures, method, Ensemble([(model, 5.0)])), alone)


def test_state_of_every_member_is_restored(models, pictures):
    def state():
        return [
            (module.training, [p.requires_grad for p in module.parameters(recurse=False)])
            for model in models
            for network in model.networks
            for module in network.modules()
        ]

    models[1].transformer.train()  # a mode protection changes and must put back
    before = state()
    try:
        _protect(pictures, _method("advdm"), Ensemble.of(models))
        assert state() == before
    finally:
        models[1].transformer.eval()


@dataclass(frozen=True)
class _Recording(SignUpdate):
    """The reference's sign step that also keeps each step's gradient."""

    gradients: list = field(default_factory=list)

    def step(self, gradient, state, step):
        self.gradients.append(gradient.detach().clone())
        return super().step(gradient, state, step)


@pytest.mark.parametrize(
    "name, changes",
    [("mist", {"random_start": False, "noise_samples": 2}), ("sdst", {})],
)
def test_gradient_is_the_weighted_sum_of_the_members_gradients(name, changes, ensemble, pictures):
    recording = _Recording()
    method = METHODS[name](
        budget=Budget(eps=EPS, step_size=4 / 255, steps=1), update=recording, **changes
    )
    _protect(pictures, method, ensemble)
    (gradient,) = recording.gradients

    # Each member on its own, with the draws in member order from the same seed.
    generator = torch.Generator().manual_seed(0)
    images = pictures.clone().requires_grad_(True)
    target = resolve_target(method.target, 32, 32).unsqueeze(0)
    expected = torch.zeros_like(pictures)
    for model, weight in zip(ensemble.models, (0.75, 0.25), strict=True):
        with model.frozen():
            step = StepNoise.draw(model, images, generator, method.noise_samples)
            with torch.no_grad():
                target_latents = model.encode(target).expand(2, -1, -1, -1)
            conditioning = Conditioning(model.embed([method.prompt] * 2), target_latents)
            value = weighted_objective(model, images, method.weights(), conditioning, step)
            (member_gradient,) = torch.autograd.grad(value, images)
        assert member_gradient.abs().max() > 0
        expected += weight * member_gradient
    scale = expected.abs().max()
    assert torch.allclose(gradient, expected, rtol=1e-4, atol=1e-5 * scale)


def test_tiles_and_padding_follow_the_least_common_multiple(ensemble):
    assert ensemble.size_multiple == 4  # tiny: 2, tiny-sd3: 2 × 2×2 patches
    images = torch.rand(1, 3, 30, 45, generator=torch.Generator().manual_seed(0))
    protected = _protect(images, _method("sds-"), ensemble)  # padded to 32 × 48
    assert protected.shape == images.shape
    assert (protected - images).abs().max() <= EPS + 1e-6
    with pytest.raises(ValueError, match="size multiple 4"):
        protect_tiled(images, _method("sds-"), ensemble, tile=30, overlap=8)
    tiled = protect_tiled(
        images, _method("sds-"), ensemble, tile=32, overlap=8, generator=torch.Generator()
    )
    assert (tiled - images).abs().max() <= EPS + 1e-6


def test_describe_names_every_member(ensemble):
    described = ensemble.describe()
    assert described["family"] == "ensemble" and described["random_weights"]
    members = described["members"]
    assert [(m["name"], m["family"], m["weight"]) for m in members] == [
        ("tiny", "sd", 0.75),
        ("tiny-sd3", "sd3", 0.25),
    ]
    assert {m["dtype"] for m in members} == {"float32"}
    assert ensemble.name == "tiny×0.75 + tiny-sd3×0.25"


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1, 0], "weight of 'tiny-sd3' must be finite and > 0, got 0"),
        ([1, -2], "weight of 'tiny-sd3' must be finite and > 0, got -2"),
        ([float("nan"), 1], "weight of 'tiny' must be finite and > 0, got nan"),
        ([float("inf"), 1], "weight of 'tiny' must be finite and > 0, got inf"),
        ([True, 1], "weight of 'tiny' must be a number > 0, got True"),
        (["2", 1], "weight of 'tiny' must be a number > 0, got '2'"),
        ([1, 2, 3], "one weight per model: 2 models \\(tiny, tiny-sd3\\), 3 weights"),
    ],
)
def test_bad_weights_are_refused_by_name(weights, message, models):
    with pytest.raises(ValueError, match=message):
        Ensemble.of(models, weights)


def test_members_must_share_a_device_and_a_precision(models):
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])
    with pytest.raises(ValueError, match="LatentDiffusion models, got str"):
        Ensemble([("tiny", 1.0)])
    half = LatentDiffusion.random("tiny").to("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="share one dtype, got tiny: torch.float32, tiny"):
        Ensemble.of([models[0], half])


def test_what_needs_one_model_refuses_an_ensemble(ensemble, pictures, tiny_protector_dir):
    with pytest.raises(ValueError, match="needs one model, not an ensemble \\('tiny', 'tiny-sd3'"):
        sdedit(ensemble, pictures, prompt="a photo", strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="the latent shift needs one model"):
        latent_shift(ensemble, pictures, pictures)
    amortised = METHODS["amortised"](protector=tiny_protector_dir)
    with pytest.raises(ProtectorMismatchError, match="the amortised method needs one model"):
        protect(pictures, amortised, ensemble)
    with pytest.raises(ValueError, match="'unet' needs one model"):
        _ = ensemble.unet
    assert not hasattr(ensemble, "no_such_thing")


# The command line.


@pytest.fixture
def picture_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    coarse = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((32, 32), Image.Resampling.BILINEAR).save(folder / "a.png")
    return folder


def _cli_protect(run_cli, folder, out, *options):
    quick = ("--steps", "2", "--eps", "6", "--step-size", "3", "--device", "cpu")
    return run_cli("protect", folder, "-o", out, *quick, "--dtype", "fp32", *options)


def test_cli_protects_against_an_ensemble_and_records_every_member(
    run_cli, picture_folder, tmp_path
):
    out = tmp_path / "out"
    options = ("--model", "tiny,tiny-sd3", "--model-weights", "2,1", "--method", "mist")
    assert _cli_protect(run_cli, picture_folder, out, *options) == 0
    with Image.open(picture_folder / "a.png") as clean, Image.open(out / "a.png") as saved:
        difference = np.abs(np.asarray(saved, np.int16) - np.asarray(clean, np.int16))
    assert 0 < difference.max() <= 6
    (record_path,) = out.glob("protect-*.json")
    record = json.loads(record_path.read_text())
    model = record["model"]
    assert model["family"] == "ensemble"
    assert [(m["name"], m["family"]) for m in model["members"]] == [
        ("tiny", "sd"),
        ("tiny-sd3", "sd3"),
    ]
    assert [m["weight"] for m in model["members"]] == pytest.approx([2 / 3, 1 / 3])
    assert record["memory_plan"]["estimated_gib"] > 0
    assert record["images"][0]["ok"]

    # Same settings: resumed; other weights: another fingerprint, protected again.
    def reused_by_run():
        records = [json.loads(path.read_text()) for path in out.glob("protect-*.json")]
        return sorted(record["images"][0]["reused"] for record in records)

    assert _cli_protect(run_cli, picture_folder, out, *options) == 0
    assert reused_by_run() == [False, True]
    other_weights = (*options[:3], "1,1", *options[4:])
    assert _cli_protect(run_cli, picture_folder, out, *other_weights) == 0
    assert reused_by_run() == [False, False, True]


@pytest.mark.parametrize(
    "options, message",
    [
        (("--model", "tiny,tiny-sd3", "--model-weights", "1,2,3"), "one weight per model"),
        (("--model", "tiny,tiny-sd3", "--model-weights", "1,0"), "must be finite and > 0"),
        (("--model", "tiny,tiny-sd3", "--model-weights", "a,b"), "takes numbers"),
    ],
)
def test_cli_refuses_bad_ensemble_weights(
    options, message, run_cli, picture_folder, tmp_path, capsys
):
    assert _cli_protect(run_cli, picture_folder, tmp_path / "out", *options) == 2
    assert message in capsys.readouterr().err


def test_cli_commands_that_need_one_model_refuse_several(run_cli, picture_folder, tmp_path, capsys):
    mimic = ("mimic", "sdedit", picture_folder, "-o", tmp_path / "m", "--device", "cpu")
    code = run_cli(*mimic, "--model", "tiny,tiny-sd3")
    assert code == 2
    assert "only `mimicshield protect` protects against several" in capsys.readouterr().err


def test_cli_passes_the_model_config_to_every_member(
    run_cli, picture_folder, tmp_path, monkeypatch
):
    from mimicshield.cli import options

    calls = []

    def load(name, *, device, dtype, config):
        calls.append((name, config))
        return LatentDiffusion.random("tiny-flux" if name.endswith(".safetensors") else "tiny")

    monkeypatch.setattr(options, "load_named_model", load)
    config = tmp_path / "flux-config"
    models = ("--model", "flux.safetensors,tiny", "--model-config", config)
    assert _cli_protect(run_cli, picture_folder, tmp_path / "out", *models) == 0
    assert calls == [("flux.safetensors", str(config)), ("tiny", str(config))]
