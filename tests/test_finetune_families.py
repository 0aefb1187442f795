"""Fine-tuning mimicry on every family besides SD 1.x/2.x (whose own tests are test_finetune's).

LoRA and DreamBooth on SDXL's UNet and on SD3's and FLUX's transformers; textual inversion on
SDXL's two text encoders, and refused on SD3 and FLUX.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_state import assert_bit_exact, held_out_loss, snapshot
from safetensors.torch import load_file

from mimicshield.cli.main import main
from mimicshield.mimicry import (
    LORA_WEIGHTS_FILE,
    DreamBoothConfig,
    LoRAConfig,
    TextualInversionConfig,
    generate,
    initializer_embeddings,
    installed_lora,
    installed_token,
    learn_token,
    sample_dreambooth,
    sample_lora,
    train_dreambooth,
    train_lora,
)
from mimicshield.mimicry.lora import LORA_TARGET_MODULES

#: Quick settings that move a tiny denoiser visibly in a few steps; alpha ≠ rank, so that a
#: loader that ignored the file's metadata would scale the adapters differently.
LORA = LoRAConfig(rank=4, alpha=8.0, learning_rate=3e-2, steps=8, batch_size=2)
DREAMBOOTH = DreamBoothConfig(learning_rate=3e-4, steps=8, batch_size=2)
SAMPLING = {"num_images": 2, "height": 16, "width": 16, "num_inference_steps": 2}


def _used(model, images):
    """The held-out loss of ``model``, which has run its pipeline and text encoders once.

    Attributes set on first use (transformers' output-capturing hooks on a text encoder,
    diffusers' hook registry on a transformer) are then in place before a snapshot.
    """
    with torch.no_grad():
        model.pipeline("text2img")("a", height=16, width=16, num_inference_steps=1)
    return held_out_loss(model, images)


@pytest.fixture(scope="module")
def trained_lora(module_family_model):
    """trained_lora(name) → (model, state before, base loss, weights), trained once per family.

    The model is put in a mixed state first (denoiser in training mode, one weight trainable),
    which "restored" cannot match by accident.
    """
    runs = {}
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def run(name):
        if name not in runs:
            model = module_family_model(name)
            model.denoiser.train().requires_grad_(False)
            next(model.denoiser.parameters()).requires_grad_(True)
            base = _used(model, images)
            before = snapshot(model)
            weights = train_lora(model, images, LORA, generator=torch.Generator().manual_seed(0))
            runs[name] = (model, images, before, base, weights)
        return runs[name]

    return run


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_lora_adapts_the_family_modules_lowers_the_loss_and_leaves_the_model_bit_exact(
    trained_lora, name
):
    model, images, before, base_loss, weights = trained_lora(name)
    assert_bit_exact(model, before)
    assert weights.family == model.family and len(weights.losses) == LORA.steps
    targets = LORA_TARGET_MODULES[model.family]
    assert weights.config.target_modules == targets
    adapted = {key.split(".lora_")[0] for key in weights.state_dict}
    assert all(any(module.endswith(f".{target}") for module in adapted) for target in targets)
    ups = [t for key, t in weights.state_dict.items() if "lora_B" in key]
    assert any(t.abs().max() > 0 for t in ups)  # B starts at zero: the adapters moved
    with installed_lora(model, weights.config, weights.state_dict):
        assert held_out_loss(model, images) < base_loss
    assert_bit_exact(model, before)


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_saved_lora_loads_through_the_family_pipeline_and_gives_the_same_images(
    trained_lora, build_family_model, name, seeded, tmp_path
):
    model, _, before, _, weights = trained_lora(name)
    assert weights.save(tmp_path) == tmp_path / LORA_WEIGHTS_FILE
    ours = sample_lora(model, weights, **SAMPLING, guidance_scale=2.0, generator=seeded(5))
    assert ours.shape == (2, 3, 16, 16) and 0 <= ours.min() and ours.max() <= 1
    assert_bit_exact(model, before)

    other = build_family_model(name)  # the same random weights, for the loader to change
    pipeline = other.pipeline("text2img")

    def theirs():
        guidance = {"true_cfg_scale": 2.0, "negative_prompt": [""] * 2}
        if model.family != "flux":  # FLUX.1's guidance_scale is its embedded guidance
            guidance = {"guidance_scale": 2.0}
        run = {"num_inference_steps": 2, "generator": seeded(5), "output_type": "pt"}
        return pipeline([LORA.instance_prompt] * 2, height=16, width=16, **run, **guidance).images

    base = theirs()
    pipeline.load_lora_weights(tmp_path)
    assert other.denoiser.peft_config["default_0"].lora_alpha == 8  # from the file's metadata
    assert torch.equal(theirs(), ours)
    assert not torch.equal(base, ours)


def test_lora_weights_of_another_family_are_refused(trained_lora, module_family_model):
    _, _, _, _, weights = trained_lora("tiny-sd3")
    with pytest.raises(ValueError, match="trained on a sd3 model; 'tiny-flux' is flux"):
        sample_lora(module_family_model("tiny-flux"), weights, **SAMPLING)


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_dreambooth_tunes_a_copy_of_the_denoiser_and_never_touches_the_model(
    module_family_model, name, images, seeded
):
    model = module_family_model(name)
    base_loss = _used(model, images)
    before = snapshot(model)
    tuned = train_dreambooth(model, images, DREAMBOOTH, generator=seeded(0))
    assert_bit_exact(model, before)

    part = "unet" if model.family == "sdxl" else "transformer"
    assert tuned.part == part and tuned.denoiser is not getattr(model, part)
    swapped = dataclasses.replace(model, **{part: tuned.denoiser}, _prompt_cache={})
    assert held_out_loss(swapped, images) < base_loss
    samples = sample_dreambooth(model, tuned, **SAMPLING, generator=seeded(5))
    assert samples.shape == (2, 3, 16, 16)
    assert torch.equal(samples, sample_dreambooth(model, tuned, **SAMPLING, generator=seeded(5)))
    assert_bit_exact(model, before)


# ------------------------------------------------------------------------ textual inversion

#: A quick setting with one template. The tiny SDXL's random text encoders condition its UNet
#: only weakly: the loss moves by about 1e-3, measured on 32 fixed draws.
TOKEN = TextualInversionConfig(
    steps=20, learning_rate=0.1, batch_size=2, templates=("a painting in the style of {}",)
)


def _token_loss(model, images, vectors):
    """The held-out loss of the training prompt with ``vectors`` as the token's embeddings."""
    with torch.no_grad(), installed_token(model, TOKEN.placeholder, vectors) as token:
        embeddings = token.embed(model, [TOKEN.templates[0].format(TOKEN.placeholder)])
    return held_out_loss(model, images, embeddings, draws=32)


def test_sdxl_token_gets_a_vector_per_encoder_lowers_the_loss_and_the_model_is_restored(
    module_family_model, images, seeded
):
    model = module_family_model("tiny-sdxl")
    model.text_encoder_2.train().requires_grad_(False)  # a mixed state, restored exactly
    model.text_encoder.get_input_embeddings().requires_grad_(True)
    _used(model, images)
    initial = initializer_embeddings(model, TOKEN.initializer)
    initial_loss = _token_loss(model, images, initial)
    before = snapshot(model)

    token = learn_token(model, images, TOKEN, generator=seeded(0))

    assert_bit_exact(model, before)
    assert [tuple(e.shape) for e in token.embeddings] == [(32,), (48,)]  # CLIP-L, CLIP-G widths
    assert all(not torch.allclose(e, i) for e, i in zip(token.embeddings, initial, strict=True))
    assert _token_loss(model, images, token.embeddings) < initial_loss
    assert_bit_exact(model, before)


def test_sdxl_learn_token_same_seed_same_token(module_family_model, images, seeded):
    model = module_family_model("tiny-sdxl")
    config = dataclasses.replace(TOKEN, steps=2)
    first, again, other = (
        learn_token(model, images, config, generator=seeded(seed)) for seed in (0, 0, 1)
    )
    assert all(torch.equal(a, b) for a, b in zip(first.embeddings, again.embeddings, strict=True))
    assert not torch.equal(first.embeddings[1], other.embeddings[1])


def test_saved_sdxl_token_loads_into_both_encoders_and_gives_the_same_images(
    module_family_model, build_family_model, images, seeded, tmp_path
):
    model = module_family_model("tiny-sdxl")
    token = learn_token(model, images, dataclasses.replace(TOKEN, steps=2), generator=seeded(0))
    ours = generate(model, token, **SAMPLING, guidance_scale=2.0, generator=seeded(5))
    token.save(tmp_path / "token.safetensors")
    saved = load_file(tmp_path / "token.safetensors")
    assert torch.equal(saved["clip_l"][0], token.embeddings[0])
    assert torch.equal(saved["clip_g"][0], token.embeddings[1])

    other = build_family_model("tiny-sdxl")
    pipeline = other.pipeline("text2img")
    for key, encoder, tokenizer in (
        ("clip_l", pipeline.text_encoder, pipeline.tokenizer),
        ("clip_g", pipeline.text_encoder_2, pipeline.tokenizer_2),
    ):
        pipeline.load_textual_inversion(
            saved[key], token=token.placeholder, text_encoder=encoder, tokenizer=tokenizer
        )
    prompts = [f"a painting in the style of {token.placeholder}"] * 2
    run = {"num_inference_steps": 2, "generator": seeded(5), "output_type": "pt"}
    theirs = pipeline(prompts, height=16, width=16, guidance_scale=2.0, **run).images
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_textual_inversion_is_refused_for_flow_families_with_a_pointer_to_lora(
    module_family_model, name, images
):
    model = module_family_model(name)
    message = f"not available for '{name}' \\({model.family}\\).*use LoRA"
    with pytest.raises(ValueError, match=message):
        learn_token(model, images, dataclasses.replace(TOKEN, steps=1))


# -------------------------------------------------------------------------------------- shells


def test_cli_saves_a_tuned_transformer_and_refuses_textual_inversion_on_sd3(
    image_folder, tmp_path, capsys
):
    inputs = image_folder("a.png", "b.png", size=(16, 16))
    quick = ["--train-steps", "1", "--num-inference-steps", "1", "--num-images", "1"]
    out = tmp_path / "db"
    args = ["dreambooth", inputs, "-o", out, "--model", "tiny-flux", "--save-denoiser", *quick]
    assert main(["mimic", *map(str, args)]) == 0
    assert (out / "transformer" / "config.json").is_file()
    assert "fine-tuned the transformer on 2 images" in capsys.readouterr().out

    args = ["textual-inversion", inputs, "-o", tmp_path / "ti", "--model", "tiny-sd3", *quick]
    assert main(["mimic", *map(str, args)]) == 2
    assert "not available for 'tiny-sd3' (sd3)" in capsys.readouterr().err
    assert not (tmp_path / "ti").exists()
