"""Mimicry scenarios on tiny models: shapes, ranges, seeds, exactness, model left as found."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from mimicshield import METHODS, Budget, LatentDiffusion, protect
from mimicshield.mimicry import (
    MASKS,
    TEXTUAL_INVERSION_PRESETS,
    TextualInversionConfig,
    TextualInversionScenario,
    border_mask,
    center_mask,
    denoising_steps,
    generate,
    initializer_embeddings,
    inpaint,
    installed_token,
    is_inpainting_model,
    learn_token,
    one_step_reconstruction,
    one_step_timestep,
    sdedit,
    strokes_mask,
    textual_inversion,
)
from mimicshield.models import StableDiffusion
from mimicshield.models.random_weights import TINY


def _snapshot(model):
    """Everything a scenario could leave changed: weights, flags, modes, modules, vocabulary."""
    networks = {"vae": model.vae, "unet": model.unet, "text_encoder": model.text_encoder}
    return {
        "weights": {
            name: {key: value.clone() for key, value in net.state_dict().items()}
            for name, net in networks.items()
        },
        "requires_grad": {
            name: [p.requires_grad for p in net.parameters()] for name, net in networks.items()
        },
        "training": {name: [m.training for m in net.modules()] for name, net in networks.items()},
        "input_embeddings": model.text_encoder.get_input_embeddings(),
        "vocab": dict(model.tokenizer.get_vocab()),
        "vocab_size": len(model.tokenizer),
        "table_shape": tuple(model.text_encoder.get_input_embeddings().weight.shape),
    }


def _assert_same_state(model, before):
    after = _snapshot(model)
    for name, weights in before["weights"].items():
        assert weights.keys() == after["weights"][name].keys(), name
        for key, value in weights.items():
            assert torch.equal(value, after["weights"][name][key]), f"{name}.{key} changed"
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["input_embeddings"] is before["input_embeddings"]
    assert after["vocab"] == before["vocab"]
    assert after["vocab_size"] == before["vocab_size"]
    assert after["table_shape"] == before["table_shape"]


@pytest.fixture
def odd_images(seeded):
    """Two images (2, 3, 17, 20): H not a multiple of the VAE's factor, values at both ends."""
    images = torch.rand(2, 3, 17, 20, generator=seeded(5))
    images[:, :, 0, 0], images[:, :, -1, -1] = 0.0, 1.0
    return images


@pytest.fixture
def fresh_model():
    """A model of its own (state is changed on purpose before some tests)."""
    return LatentDiffusion.random("tiny", seed=0)


# ---------------------------------------------------------------------------------------- SDEdit


def test_sdedit_shape_range_seed_and_input_untouched(tiny_model, odd_images, seeded):
    original = odd_images.clone()
    run = dict(prompt="a photo", strength=0.3, num_inference_steps=10)
    first = sdedit(tiny_model, odd_images, **run, generator=seeded(0))
    again = sdedit(tiny_model, odd_images, **run, generator=seeded(0))
    other = sdedit(tiny_model, odd_images, **run, generator=seeded(1))
    assert first.shape == odd_images.shape and first.dtype == odd_images.dtype
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(odd_images, original)


@pytest.mark.parametrize(
    ("strength", "steps", "expected"),
    [(0.3, 10, 3), (1.0, 4, 4), (0.01, 100, 1), (0.57, 100, 57), (0.05, 100, 5)],
)
def test_denoising_steps_is_the_floor_of_strength_times_steps(strength, steps, expected):
    assert denoising_steps(strength, steps) == expected


def test_sdedit_runs_exactly_the_denoising_steps(tiny_model, images, count_unet_calls):
    with count_unet_calls(tiny_model) as calls:
        sdedit(tiny_model, images, prompt="a photo", strength=0.3, num_inference_steps=10)
    assert sum(calls.values()) == 3


def test_sdedit_tiny_strength_runs_one_step_and_warns(tiny_model, images, caplog, count_unet_calls):
    with caplog.at_level(logging.WARNING), count_unet_calls(tiny_model) as calls:
        edited = sdedit(tiny_model, images, prompt="a photo", strength=0.01, num_inference_steps=10)
    assert sum(calls.values()) == 1
    assert "less than one DDIM step" in caplog.text
    assert edited.shape == images.shape


def test_sdedit_guidance_batches_unconditional_and_conditional(tiny_model, images):
    batch_sizes = []
    handle = tiny_model.unet.register_forward_pre_hook(
        lambda module, args: batch_sizes.append(args[0].shape[0])
    )
    try:
        sdedit(
            tiny_model,
            images,
            prompt="a photo",
            strength=0.5,
            num_inference_steps=4,
            guidance_scale=7.5,
        )
    finally:
        handle.remove()
    assert batch_sizes == [4, 4]  # 2 steps, each one pass over (unconditional, conditional) × 2


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_sdedit_rejects_strength_outside_unit_interval(tiny_model, images, strength):
    with pytest.raises(ValueError, match=rf"strength must lie in \(0, 1\], got {strength:g}"):
        sdedit(tiny_model, images, prompt="a photo", strength=strength)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(3, 16, 16), r"\(B, 3, H, W\)"),
        (torch.rand(0, 3, 16, 16), "at least one"),
        (torch.rand(1, 3, 16, 16) * 2, r"\[0, 1\]"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating point"),
    ],
)
def test_scenarios_reject_bad_images(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        sdedit(tiny_model, bad, prompt="a photo", strength=0.3)
    with pytest.raises(ValueError, match=message):
        one_step_reconstruction(tiny_model, bad, prompt="a photo", strength=0.3)
    with pytest.raises(ValueError, match=message):
        learn_token(tiny_model, bad, TextualInversionConfig(steps=1))


def test_sdedit_leaves_the_model_and_its_scheduler_as_found(fresh_model, images):
    fresh_model.unet.train()
    before = _snapshot(fresh_model)
    scheduler = fresh_model.scheduler
    timesteps = scheduler.timesteps.clone()
    sdedit(fresh_model, images, prompt="a photo", strength=0.2, num_inference_steps=5)
    _assert_same_state(fresh_model, before)
    assert fresh_model.scheduler is scheduler
    assert torch.equal(scheduler.timesteps, timesteps)  # the pipeline set its own scheduler's


# ------------------------------------------------------------------------------ one-step x̂₀


@pytest.mark.parametrize(("strength", "expected"), [(0.3, 299), (1.0, 999), (1e-4, 0)])
def test_one_step_timestep(strength, expected):
    assert one_step_timestep(strength, 1000) == expected


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_v_model"])
def test_one_step_reconstruction_matches_ddim_x0_prediction(fixture, request, images, seeded):
    """Against diffusers' DDIM `pred_original_sample`, which handles ε and v independently."""
    model = request.getfixturevalue(fixture)
    result = one_step_reconstruction(
        model, images, prompt="a photo", strength=0.3, generator=seeded(3)
    )

    generator = seeded(3)  # same draws in the same order: posterior sample, then noise
    shape = model.latent_shape(images)
    posterior_noise = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.full((len(images),), 299)
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(10)
    with torch.no_grad():
        latents = model.encode(images, posterior_noise)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        output = model.unet(
            noisy, timesteps, encoder_hidden_states=model.embed(["a photo"] * 2).hidden_states
        )
        x0 = scheduler.step(output.sample, 299, noisy).pred_original_sample
        expected = model.decode(x0)
    assert result.shape == images.shape
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_one_step_reconstruction_same_seed_same_output(tiny_model, odd_images, seeded):
    first = one_step_reconstruction(
        tiny_model, odd_images, prompt="a photo", strength=0.1, generator=seeded(0)
    )
    again = one_step_reconstruction(
        tiny_model, odd_images, prompt="a photo", strength=0.1, generator=seeded(0)
    )
    assert first.shape == odd_images.shape
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)


# --------------------------------------------------------------------------------------- masks


def test_generated_masks_are_binary_and_sized(seeded):
    for name, make in MASKS.items():
        mask = make(17, 20, generator=seeded(0))
        assert mask.shape == (1, 1, 17, 20), name
        assert set(mask.unique().tolist()) == {0.0, 1.0}, name


def test_center_and_border_are_complements_with_the_box_in_the_middle():
    center = center_mask(16, 20)
    assert torch.equal(center + border_mask(16, 20), torch.ones(1, 1, 16, 20))
    assert center[0, 0, 4:12, 5:15].eq(1).all() and center.sum() == 8 * 10


def test_strokes_are_seeded(seeded):
    first = strokes_mask(32, 32, generator=seeded(0))
    assert torch.equal(first, strokes_mask(32, 32, generator=seeded(0)))
    assert not torch.equal(first, strokes_mask(32, 32, generator=seeded(1)))
    assert 0 < first.mean() < 1


def test_masks_reject_bad_parameters():
    with pytest.raises(ValueError, match="fraction must be in"):
        center_mask(16, 16, fraction=1.0)
    with pytest.raises(ValueError, match="mask size must be positive, got 0×16"):
        border_mask(0, 16)
    with pytest.raises(ValueError, match="strokes=0"):
        strokes_mask(16, 16, strokes=0)


# ---------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("name", list(MASKS))
def test_inpaint_keeps_pixels_outside_the_mask_exactly(tiny_model, odd_images, name, seeded):
    mask = MASKS[name](17, 20, generator=seeded(2))
    original = odd_images.clone()
    result = inpaint(
        tiny_model, odd_images, mask, prompt="a photo", num_inference_steps=3, generator=seeded(0)
    )
    keep = (mask < 0.5).expand_as(odd_images)
    assert result.shape == odd_images.shape and result.dtype == odd_images.dtype
    assert 0 <= result.min() and result.max() <= 1
    assert torch.equal(result[keep], odd_images[keep])
    assert not torch.equal(result[~keep], odd_images[~keep])  # the masked part was repainted
    assert torch.equal(odd_images, original)


def test_inpaint_same_seed_same_output_and_per_image_masks(tiny_model, images, seeded):
    masks = torch.cat([center_mask(16, 20), border_mask(16, 20)])  # (2, 1, 16, 20)
    run = dict(prompt="a photo", num_inference_steps=3, guidance_scale=1.0)
    first = inpaint(tiny_model, images, masks, **run, generator=seeded(0))
    assert torch.equal(first, inpaint(tiny_model, images, masks, **run, generator=seeded(0)))
    for index in range(2):
        keep = (masks[index] < 0.5).expand_as(images[index])
        assert torch.equal(first[index][keep], images[index][keep])


def test_inpaint_soft_mask_is_binarised_at_one_half(tiny_model, images):
    mask = torch.full((1, 1, 16, 20), 0.4)
    mask[..., :8, :] = 0.6
    result = inpaint(tiny_model, images, mask, prompt="a photo", num_inference_steps=2)
    assert torch.equal(result[..., 8:, :], images[..., 8:, :])
    assert not torch.equal(result[..., :8, :], images[..., :8, :])


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(1, 1, 16, 16), r"mask must have shape \(1 or 2, 1, 16, 20\).*\(1, 1, 16, 16\)"),
        (torch.ones(3, 1, 16, 20), r"got \(3, 1, 16, 20\)"),
        (torch.ones(1, 3, 16, 20), r"got \(1, 3, 16, 20\)"),
        (torch.full((1, 1, 16, 20), 255.0), r"mask must lie in \[0, 1\]"),
    ],
)
def test_inpaint_rejects_bad_masks(tiny_model, images, mask, message):
    with pytest.raises(ValueError, match=message):
        inpaint(tiny_model, images, mask, prompt="a photo")


def test_inpaint_uses_the_inpainting_unet_when_it_has_nine_channels(tiny_model, images):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**{**TINY["unet"], "in_channels": 9})
    model = StableDiffusion(
        tiny_model.vae,
        unet,
        tiny_model.text_encoder,
        tiny_model.tokenizer,
        tiny_model.scheduler,
        name="tiny-inpainting",
        random_weights=True,
    )
    seen_channels = []
    handle = unet.register_forward_pre_hook(
        lambda module, args: seen_channels.append(args[0].shape[1])
    )
    mask = border_mask(16, 20)
    try:
        result = inpaint(model, images, mask, prompt="a photo", num_inference_steps=2)
    finally:
        handle.remove()
    assert is_inpainting_model(model) and not is_inpainting_model(tiny_model)
    assert seen_channels == [9, 9]
    keep = (mask < 0.5).expand_as(images)
    assert torch.equal(result[keep], images[keep])


# --------------------------------------------------------------------------- textual inversion


def test_textual_inversion_leaves_tokenizer_and_text_encoder_exactly_as_before(
    fresh_model, images, seeded
):
    # A mixed state, so that "restored" cannot pass by accident: encoder training, UNet eval,
    # one encoder layer trainable.
    fresh_model.text_encoder.train()
    fresh_model.text_encoder.requires_grad_(False)
    fresh_model.text_encoder.get_input_embeddings().requires_grad_(True)
    before = _snapshot(fresh_model)
    (initial,) = initializer_embeddings(fresh_model, "painting")

    config = TextualInversionConfig(steps=4, batch_size=2)
    generated, token = textual_inversion(
        fresh_model, images, config=config, num_images=2, num_inference_steps=2, generator=seeded(0)
    )

    _assert_same_state(fresh_model, before)
    assert generated.shape == (2, 3, 16, 20)
    assert 0 <= generated.min() and generated.max() <= 1
    (learned,) = token.embeddings  # one text encoder, one vector
    assert learned.shape == initial.shape
    assert not torch.allclose(learned, initial)  # the learned row moved
    assert len(token.losses) == 4 and all(torch.isfinite(torch.tensor(token.losses)))
    assert token.config == config


def test_learn_token_same_seed_same_embedding(tiny_model, images, seeded):
    config = TextualInversionConfig(steps=3)
    first = learn_token(tiny_model, images, config, generator=seeded(0))
    again = learn_token(tiny_model, images, config, generator=seeded(0))
    other = learn_token(tiny_model, images, config, generator=seeded(1))
    assert torch.equal(first.embeddings[0], again.embeddings[0])
    assert not torch.equal(first.embeddings[0], other.embeddings[0])


def test_learn_token_reports_progress(tiny_model, images):
    seen = []
    learn_token(
        tiny_model,
        images,
        TextualInversionConfig(steps=2),
        callback=lambda step, steps, loss: seen.append((step, steps)),
    )
    assert seen == [(1, 2), (2, 2)]


def test_installed_token_only_inside_the_block_and_restored_after_an_error(tiny_model):
    placeholder = "<sks>"
    prompt = f"a painting of {placeholder}"
    plain = tiny_model.embed(["a photo"])
    table = tiny_model.text_encoder.get_input_embeddings()
    vocab_size = len(tiny_model.tokenizer)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        with installed_token(tiny_model, placeholder, [torch.zeros(32)]) as token:
            zero = token.embed(tiny_model, [prompt])
            token.vectors[0].fill_(1.0)
            one = token.embed(tiny_model, [prompt])
            assert not torch.allclose(zero.hidden_states, one.hidden_states)  # the new row
            others = token.embed(tiny_model, ["a photo"]).hidden_states
            assert torch.equal(others, plain.hidden_states)  # other prompts as before
            assert len(token.tokenizers["tokenizer"]) == vocab_size + 1
            raise RuntimeError("boom")
    assert tiny_model.text_encoder.get_input_embeddings() is table
    assert len(tiny_model.tokenizer) == vocab_size
    assert placeholder not in tiny_model.tokenizer.get_vocab()


def test_installed_token_refuses_a_known_word_and_a_wrong_size(tiny_model):
    with pytest.raises(ValueError, match="already in the vocabulary"):
        with installed_token(tiny_model, "a</w>", [torch.zeros(32)]):
            pass
    with pytest.raises(ValueError, match=r"shape \(32,\).*got \(16,\)"):
        with installed_token(tiny_model, "<new>", [torch.zeros(16)]):
            pass
    with pytest.raises(ValueError, match="needs 1 embeddings"):
        with installed_token(tiny_model, "<new>", [torch.zeros(32)] * 2):
            pass


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"placeholder": "<Upper>"}, "lower case"),
        ({"steps": 0}, "steps must be a whole number ≥ 1, got 0"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"templates": ("no slot",)}, "each contain"),
    ],
)
def test_textual_inversion_config_is_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        TextualInversionConfig(**settings)


def test_quick_is_the_default_and_what_evaluate_runs_gpu_is_the_diffusers_example():
    quick, gpu = TEXTUAL_INVERSION_PRESETS["quick"], TEXTUAL_INVERSION_PRESETS["gpu"]
    assert quick == TextualInversionConfig() and TextualInversionScenario().steps == quick.steps
    # diffusers' examples/textual_inversion README: 3000 steps, batch 1 with 4 accumulated
    # gradients, 5e-4 scaled by --scale_lr to 5e-4 × 4 × 1 × 1 GPU.
    assert (gpu.steps, gpu.batch_size, gpu.learning_rate) == (3000, 4, 5e-4 * 4)
    assert (gpu.placeholder, gpu.initializer, gpu.templates) == (
        quick.placeholder,
        quick.initializer,
        quick.templates,
    )


def test_generate_crops_odd_sizes_and_saved_embedding_reads_back(tiny_model, tmp_path, seeded):
    token = learn_token(
        tiny_model, torch.rand(1, 3, 16, 16, generator=seeded(0)), TextualInversionConfig(steps=1)
    )
    images = generate(
        tiny_model,
        token,
        num_images=3,
        height=12,
        width=20,
        num_inference_steps=2,
        generator=seeded(0),
    )
    assert images.shape == (3, 3, 12, 20)
    token.save(tmp_path / "learned.safetensors")
    assert torch.equal(
        load_file(tmp_path / "learned.safetensors")[token.placeholder], token.embeddings[0]
    )
    with pytest.raises(ValueError, match="must contain"):
        generate(tiny_model, token, prompt="no slot")


# --------------------------------------------------------------------------- inpainting checkpoints


def test_an_inpainting_checkpoint_serves_protection_sdedit_and_textual_inversion(
    tiny_inpaint_model, images, seeded
):
    """A 9-channel UNet loaded through the real loader serves every scenario.

    The UNet always gets 9 channels (the "repaint everything" condition).
    """
    model = tiny_inpaint_model
    channels = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: channels.append(args[0].shape[1]))
    try:
        for name in ("sds-", "advdm"):
            method = METHODS[name](budget=Budget.from_255(8, 2, 2), prompt="a photo")
            protected = protect(images, method, model, generator=seeded())
            assert protected.shape == images.shape
        edited = sdedit(model, images, prompt="a", strength=0.5, num_inference_steps=2)
        single = one_step_reconstruction(model, images, prompt="a", strength=0.3)
        generated, _ = textual_inversion(
            model, images, config=TextualInversionConfig(steps=1), num_images=1,
            num_inference_steps=1, generator=seeded(),
        )  # fmt: skip
    finally:
        handle.remove()
    assert edited.shape == single.shape == images.shape and generated.shape[0] == 1
    assert channels and set(channels) == {9}
    mask, latents = model.repaint_everything(torch.zeros(2, 4, 2, 3))
    assert mask.shape == (2, 1, 2, 3) and bool((mask == 1).all()) and latents.shape == (2, 4, 2, 3)


# --------------------------------------------------------------------------- reference conventions


def _timesteps_seen(model, run):
    """(timesteps the latents were noised to, timesteps the UNet was called at) during run()."""
    noised, called = [], []
    original = DDIMScheduler.add_noise

    def add_noise(self, samples, noise, timesteps):
        noised.append(int(timesteps.reshape(-1)[0]))
        return original(self, samples, noise, timesteps)

    handle = model.unet.register_forward_pre_hook(
        lambda m, args: called.append(int(args[1].reshape(-1)[0]))
    )
    DDIMScheduler.add_noise = add_noise
    try:
        run()
    finally:
        DDIMScheduler.add_noise = original
        handle.remove()
    return noised, called


def test_reference_conventions_noise_one_stride_higher_and_take_int_s_t(tiny_model, images):
    def multi(reference):
        return lambda: sdedit(
            tiny_model, images, prompt="a", strength=0.3, num_inference_steps=10,
            reference_conventions=reference,
        )  # fmt: skip

    ours, ours_steps = _timesteps_seen(tiny_model, multi(False))
    reference, reference_steps = _timesteps_seen(tiny_model, multi(True))
    # 10 DDIM steps over 1000: τ = 1, 101, 201, …; three steps from τ[2] = 201 in both, but the
    # reference noises to τ[3] = 301.
    assert ours == [201] and reference == [301]
    assert ours_steps == reference_steps == [201, 101, 1]

    def single(reference):
        return lambda: one_step_reconstruction(
            tiny_model, images, prompt="a", strength=0.3, reference_conventions=reference
        )

    assert _timesteps_seen(tiny_model, single(False))[1] == [299]
    assert _timesteps_seen(tiny_model, single(True))[1] == [300]


def test_reference_conventions_reach_full_strength(tiny_model, images, seeded):
    """At strength 1 the reference's start (one stride above) is clamped to T − 1."""
    edited = sdedit(
        tiny_model,
        images,
        prompt="a",
        strength=1.0,
        num_inference_steps=4,
        generator=seeded(0),
        reference_conventions=True,
    )
    assert edited.shape == images.shape and bool(edited.isfinite().all())
