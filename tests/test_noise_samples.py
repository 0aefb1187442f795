"""``noise_samples``: K diffusion draws per PGD step, one encoder pass, averaged UNet terms."""

from __future__ import annotations

import json

import pytest
import torch

from mimicshield import METHODS, Budget, protect
from mimicshield.cli.main import main
from mimicshield.objectives import StepNoise, denoising_loss, score_distillation


def _single_draws(step: StepNoise) -> list[StepNoise]:
    """The K draws of a stacked step, each as a step of its own."""
    batch = step.posterior_noise.shape[0]
    return [
        StepNoise(
            step.timesteps[k * batch : (k + 1) * batch],
            step.noise[k * batch : (k + 1) * batch],
            step.posterior_noise,
        )
        for k in range(step.samples)
    ]


def test_one_draw_is_what_the_generator_gave_before_draws_could_be_several(tiny_model, images):
    step = StepNoise.draw(tiny_model, images, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    shape = tiny_model.latent_shape(images)
    timesteps = torch.randint(0, tiny_model.num_train_timesteps, (shape[0],), generator=generator)
    noise = torch.randn(shape, generator=generator)
    posterior = torch.randn(shape, generator=generator)
    assert step.samples == 1
    assert torch.equal(step.timesteps, timesteps)
    assert torch.equal(step.noise, noise) and torch.equal(step.posterior_noise, posterior)


def test_several_draws_are_stacked_along_the_batch(tiny_model, images):
    step = StepNoise.draw(tiny_model, images, torch.Generator().manual_seed(0), samples=3)
    batch, *latent = tiny_model.latent_shape(images)
    assert step.samples == 3
    assert step.timesteps.shape == (3 * batch,) and step.noise.shape == (3 * batch, *latent)
    assert step.posterior_noise.shape == (batch, *latent)
    draws = _single_draws(step)
    assert not torch.equal(draws[0].noise, draws[1].noise)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_score_distillation_gradient_is_the_mean_over_draws(
    prediction, tiny_model, tiny_v_model, images
):
    model = tiny_model if prediction == "epsilon" else tiny_v_model
    step = StepNoise.draw(model, images, torch.Generator().manual_seed(2), samples=3)
    embeddings = model.embed(["a photo"] * len(images))
    with torch.no_grad():
        latents = model.encode(images, step.posterior_noise)

    def gradient(draw: StepNoise) -> torch.Tensor:
        variable = latents.clone().requires_grad_(True)
        (result,) = torch.autograd.grad(
            score_distillation(model, variable, embeddings, draw), variable
        )
        return result

    expected = torch.stack([gradient(draw) for draw in _single_draws(step)]).mean(0)
    torch.testing.assert_close(gradient(step), expected, rtol=1e-4, atol=1e-6)


def test_denoising_loss_and_its_gradient_are_the_mean_over_draws(tiny_model, images):
    step = StepNoise.draw(tiny_model, images, torch.Generator().manual_seed(3), samples=2)
    embeddings = tiny_model.embed(["a photo"] * len(images))
    with torch.no_grad():
        latents = tiny_model.encode(images, step.posterior_noise)

    def value_and_gradient(draw: StepNoise) -> tuple[torch.Tensor, torch.Tensor]:
        variable = latents.clone().requires_grad_(True)
        value = denoising_loss(tiny_model, variable, embeddings, draw)
        (result,) = torch.autograd.grad(value, variable)
        return value.detach(), result

    singles = [value_and_gradient(draw) for draw in _single_draws(step)]
    value, grad = value_and_gradient(step)
    torch.testing.assert_close(value, torch.stack([v for v, _ in singles]).mean())
    torch.testing.assert_close(
        grad, torch.stack([g for _, g in singles]).mean(0), rtol=1e-4, atol=1e-7
    )


def test_one_encoder_pass_and_one_batched_unet_pass_per_step(tiny_model, images):
    encoder_calls, unet_batches = [], []
    handles = [
        tiny_model.vae.encoder.register_forward_hook(lambda *_: encoder_calls.append(1)),
        tiny_model.unet.register_forward_pre_hook(
            lambda _module, inputs: unet_batches.append(inputs[0].shape[0])
        ),
    ]
    method = METHODS["sds-"](budget=Budget.from_255(8, 2, 3), noise_samples=3)
    try:
        protected = protect(images, method, tiny_model, generator=torch.Generator().manual_seed(0))
    finally:
        for handle in handles:
            handle.remove()
    assert len(encoder_calls) == 3
    assert unet_batches == [3 * len(images)] * 3
    assert (protected - images).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("name", ["sds-", "advdm"])
def test_same_seed_same_output_and_draws_change_the_result(name, tiny_model, images):
    def run(samples: int, seed: int = 0) -> torch.Tensor:
        method = METHODS[name](budget=Budget.from_255(8, 2, 3), noise_samples=samples)
        return protect(images, method, tiny_model, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(2), run(2))
    assert not torch.equal(run(2), run(1))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_noise_samples_are_refused_naming_the_value(value):
    with pytest.raises(
        ValueError, match=f"noise samples must be a whole number ≥ 1, got {value!r}"
    ):
        METHODS["sds-"](noise_samples=value)


def test_cli_records_noise_samples(tmp_path, tiny_model_dir):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (16, 16), (120, 60, 200)).save(inputs / "flat.png")
    out = tmp_path / "out"
    arguments = ["protect", str(inputs), "-o", str(out), "--model", str(tiny_model_dir),
                 "--device", "cpu", "--steps", "2", "--noise-samples", "2"]  # fmt: skip
    assert main(arguments) == 0
    (record_path,) = out.glob("protect-*.json")
    assert json.loads(record_path.read_text())["method"]["noise_samples"] == 2
