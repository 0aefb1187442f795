"""The contract every registered method keeps (DESIGN §6), on a tiny model loaded from disk.

``amortised`` runs one forward pass of a trained network instead of PGD; it is held to every
property here, with the tiny model's own (untrained) protector, except where noted at the test:
its output does not depend on the seed (the network is deterministic), it has no objective
that a step moves (training does: tests/test_amortised.py), and it refuses a model other than
the one its protector was trained against (the v-prediction variant).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mimicshield import METHODS, Budget, protect
from mimicshield.objectives import Conditioning, StepNoise, weighted_objective

ALL_METHODS = sorted(METHODS)
SHORT = Budget.from_255(eps=8, step_size=2, steps=3)


#: Settings every test here gives a method unless it overrides them (filled by the fixture).
_DEFAULTS: dict[str, dict] = {}


@pytest.fixture(autouse=True)
def _protector_for_the_tiny_model(tiny_protector_dir, monkeypatch):
    """Every test here builds ``amortised`` with the tiny model's protector by default."""
    monkeypatch.setitem(_DEFAULTS, "amortised", {"protector": str(tiny_protector_dir)})


def configured(method_name, **overrides):
    return METHODS[method_name](**{**_DEFAULTS.get(method_name, {}), **overrides})


def run(method_name, model, images, seed=0, **overrides):
    method = configured(method_name, **{"budget": SHORT, **overrides})
    return protect(images, method, model, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_shape_dtype_range_and_budget(name, tiny_model, images):
    protected = run(name, tiny_model, images)
    assert protected.shape == images.shape
    assert protected.dtype == images.dtype and protected.device == images.device
    assert protected.min() >= 0 and protected.max() <= 1
    assert (protected - images).abs().max() <= SHORT.eps + 1e-6
    assert not torch.equal(protected, images), "three steps of 2/255 must change something"


#: Methods with no random draw at all, so every seed gives the same result: PCA− (a clean start
#: and an objective of the posterior's moments: no sampled latent, timestep or noise) and the
#: amortised protector (one deterministic forward pass).
DETERMINISTIC = {"pca-", "amortised"}


@pytest.mark.parametrize("name", ALL_METHODS)
def test_input_untouched_and_same_seed_same_output(name, tiny_model, images):
    before = images.clone()
    first = run(name, tiny_model, images, seed=3)
    second = run(name, tiny_model, images, seed=3)
    assert torch.equal(images, before)
    assert torch.equal(first, second)
    other_seed = run(name, tiny_model, images, seed=4)
    assert torch.equal(first, other_seed) == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("budget", [Budget.from_255(0, 1, 3), Budget.from_255(16, 1, 0)])
def test_zero_budget_or_zero_steps_is_identity(name, budget, tiny_model, images):
    assert torch.equal(run(name, tiny_model, images, budget=budget), images)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_mask_is_respected(name, tiny_model, images):
    mask = torch.zeros(1, 1, *images.shape[-2:])
    mask[..., 4:12, 5:15] = 1
    method = configured(name, budget=SHORT)
    protected = protect(
        images, method, tiny_model, mask=mask, generator=torch.Generator().manual_seed(0)
    )
    outside = mask.expand_as(images) == 0
    assert torch.equal(protected[outside], images[outside])
    assert not torch.equal(protected[~outside], images[~outside])


@pytest.mark.parametrize("name", ALL_METHODS)
def test_odd_sizes_are_padded_and_cropped_back(name, tiny_model):
    odd = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(2))
    protected = run(name, tiny_model, odd)
    assert protected.shape == odd.shape
    assert (protected - odd).abs().max() <= SHORT.eps + 1e-6


@pytest.mark.parametrize("name", ALL_METHODS)
def test_model_state_is_restored_and_weights_get_no_gradient(name, tiny_model, images):
    tiny_model.unet.train()
    tiny_model.vae.requires_grad_(False)
    tiny_model.text_encoder.requires_grad_(True)
    run(name, tiny_model, images)
    networks = (tiny_model.vae, tiny_model.unet, tiny_model.text_encoder)
    assert tiny_model.unet.training and not tiny_model.vae.training
    assert all(not p.requires_grad for p in tiny_model.vae.parameters())
    assert all(p.requires_grad for p in tiny_model.text_encoder.parameters())
    assert all(p.grad is None for net in networks for p in net.parameters())
    tiny_model.unet.eval()


@pytest.mark.parametrize(
    "name, with_grad, no_grad",
    [
        ("photoguard", 0, 0),  # encoder attack: the UNet is never run
        ("pca-", 0, 0),  # posterior collapse: the encoder only
        ("sds-", 0, 3),  # one UNet forward per step, never differentiated
        ("sds+", 0, 3),
        ("sdst", 0, 3),
        ("advdm", 3, 0),  # full gradient through the UNet
        ("mist", 3, 0),
        ("amortised", 0, 0),  # its own network only
    ],
)
def test_no_unet_pass_the_loss_does_not_use(
    name, with_grad, no_grad, tiny_model, images, count_unet_calls
):
    with count_unet_calls(tiny_model) as calls:
        run(name, tiny_model, images)
    assert calls == {"with_grad": with_grad, "no_grad": no_grad}


def _linearised_objective(method, model, images, step, conditioning, residual_at):
    """The method's objective with the SDS residual frozen at ``residual_at``.

    The SDS surrogate's value is not the loss it stands for, but its gradient direction is; with
    the residual frozen the surrogate is a function whose ascent direction PGD must follow.
    """
    weights = method.weights()
    linear_part = dataclasses.replace(weights, score_distillation=0.0)
    value = weighted_objective(model, images, linear_part, conditioning, step)
    if weights.score_distillation:
        with torch.no_grad():
            latents = model.encode(residual_at, step.posterior_noise)
            noisy = model.add_noise(latents, step.noise, step.timesteps)
            output = model.predict(noisy, step.timesteps, conditioning.embeddings)
            residual = model.predicted_noise(output, noisy, step.timesteps) - step.noise
        latents = model.encode(images, step.posterior_noise)
        value = value + weights.score_distillation * (residual * latents).sum()
    return value


# amortised optimises nothing at protection time; tests/test_amortised.py checks that training
# moves its objective.
@pytest.mark.parametrize("name", [name for name in ALL_METHODS if name != "amortised"])
def test_one_step_moves_the_objective_the_way_the_method_says(name, tiny_model, images):
    _assert_one_step_moves_the_objective(name, tiny_model, images)


def _assert_one_step_moves_the_objective(name, model, images):
    """With the step's own noise, a small clean-start step increases the maximised objective."""
    small = Budget(eps=8 / 255, step_size=1e-4, steps=1)
    method = METHODS[name](budget=small, random_start=False)
    protected = protect(images, method, model, generator=torch.Generator().manual_seed(5))
    step = StepNoise.draw(model, images, torch.Generator().manual_seed(5))
    conditioning = Conditioning(
        embeddings=model.embed([method.prompt] * len(images)),
        target_latents=_target_latents(method, model, images),
    )
    with torch.no_grad():
        before = _linearised_objective(method, model, images, step, conditioning, images)
        after = _linearised_objective(method, model, protected, step, conditioning, images)
    assert after > before


def _target_latents(method, model, images):
    if not method.needs_target:
        return None
    from mimicshield.targets import resolve_target

    target = resolve_target(method.target, *images.shape[-2:])
    with torch.no_grad():
        return model.encode(target[None]).expand(len(images), -1, -1, -1)


def test_registry_holds_the_seven_methods_of_the_paper_pca_and_the_amortised_one():
    paper = {"advdm", "advdm-", "photoguard", "mist", "sds+", "sds-", "sdst"}
    assert set(METHODS) == paper | {"pca-", "amortised"}
    starts = {name: METHODS[name]().random_start for name in paper | {"pca-"}}
    assert starts == {
        "advdm": True,
        "advdm-": True,
        "photoguard": True,
        "mist": True,
        "sds+": False,
        "sds-": False,
        "sdst": False,
        "pca-": False,  # the authors' code starts from the clean image
    }
    assert METHODS["sds-"]().budget == Budget.from_255(16, 1, 100)


def test_targeted_methods_accept_gray_and_an_image(tiny_model, images):
    gray = run("photoguard", tiny_model, images, target="gray")
    picture = run("photoguard", tiny_model, images, target=torch.rand(3, 9, 7))
    pattern = run("photoguard", tiny_model, images)
    assert not torch.equal(gray, pattern) and not torch.equal(picture, pattern)


def test_v_prediction_model_runs_every_method(tiny_v_model, images):
    for name in ALL_METHODS:
        if name == "amortised":  # its protector was trained against the ε-prediction model
            with pytest.raises(ValueError, match="this protector was trained against"):
                run(name, tiny_v_model, images)
            continue
        protected = run(name, tiny_v_model, images)
        assert (protected - images).abs().max() <= SHORT.eps + 1e-6


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(1, 4, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(1, 3, 16, 16) * 2, r"\[0, 1\]"),
        ((torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), "floating point"),
    ],
)
def test_bad_images_are_refused_clearly(bad, message, tiny_model):
    with pytest.raises(ValueError, match=message):
        protect(bad, METHODS["sds-"](budget=SHORT), tiny_model)


def test_mask_of_the_wrong_size_is_refused(tiny_model, images):
    with pytest.raises(ValueError, match="mask must have shape"):
        protect(images, METHODS["sds-"](budget=SHORT), tiny_model, mask=torch.ones(1, 1, 8, 8))


def test_objective_weights_follow_the_method_table():
    """DESIGN §3: who ascends what. Positive weight = maximised, negative = minimised."""
    from mimicshield.objectives import ObjectiveWeights as W

    assert {name: METHODS[name]().weights() for name in METHODS} == {
        "advdm": W(denoising=1.0),
        "advdm-": W(denoising=-1.0),
        "photoguard": W(latent_distance=-1.0),
        "mist": W(denoising=1e4, latent_distance=-1.0),
        "sds+": W(score_distillation=1.0),
        "sds-": W(score_distillation=-1.0),
        "sdst": W(score_distillation=-5.0, latent_distance=-1.0),
        "amortised": W(),  # nothing is optimised when it protects: one forward pass
        "pca-": W(posterior_collapse=-1.0, posterior_variance=1e-8),
    }


def test_mask_outside_zero_one_is_refused(tiny_model, images):
    with pytest.raises(ValueError, match=r"mask must lie in \[0, 1\]"):
        protect(
            images, METHODS["sds-"](budget=SHORT), tiny_model, mask=torch.full((1, 1, 16, 20), 2.0)
        )


# ---------------------------------------------------------------- every family

FAMILY_PICTURES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
PGD_METHODS = [name for name in ALL_METHODS if name != "amortised"]


@pytest.mark.parametrize("family", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("name", PGD_METHODS)
def test_every_family_keeps_the_contract(name, family, family_models):
    """Budget, range, input untouched, same seed same output, model state and gradients kept."""
    model = family_models[family]
    model.denoiser.train()
    images = FAMILY_PICTURES.clone()
    first = run(name, model, images, seed=3)
    assert torch.equal(images, FAMILY_PICTURES)
    assert torch.equal(first, run(name, model, images, seed=3))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert (first - images).abs().max() <= SHORT.eps + 1e-6
    assert not torch.equal(first, images)
    assert model.denoiser.training and not model.vae.training
    assert all(p.grad is None for net in model.networks for p in net.parameters())
    model.denoiser.eval()


@pytest.mark.parametrize("family", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("name", PGD_METHODS)
def test_every_family_one_step_moves_the_objective(name, family, family_models):
    _assert_one_step_moves_the_objective(name, family_models[family], FAMILY_PICTURES)


@pytest.mark.parametrize("family", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_the_amortised_protector_refuses_other_families(family, family_models):
    with pytest.raises(ValueError, match="trained against"):
        run("amortised", family_models[family], FAMILY_PICTURES)
