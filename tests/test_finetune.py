"""Fine-tuning mimicry (LoRA, DreamBooth) on the tiny model: training, seeds, saving, shells."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from model_state import assert_bit_exact, held_out_loss, snapshot

from mimicshield import LatentDiffusion
from mimicshield.cli.main import main
from mimicshield.mimicry import (
    LORA_PRESETS,
    LORA_WEIGHTS_FILE,
    SCENARIOS,
    DreamBoothConfig,
    LoRAConfig,
    installed_lora,
    sample_dreambooth,
    sample_lora,
    train_dreambooth,
    train_lora,
)
from mimicshield.mimicry import scenarios as scenarios_module
from mimicshield.models import StableDiffusion

#: Quick settings that move the tiny model visibly in a few steps.
LORA = LoRAConfig(rank=4, learning_rate=3e-2, steps=12, batch_size=2)
DREAMBOOTH = DreamBoothConfig(learning_rate=3e-4, steps=12, batch_size=2)
SAMPLING = {"num_images": 2, "height": 16, "width": 20, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """A model of this module's own from the tiny folder (its state is changed on purpose)."""
    return LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")


def _mixed_state(model):
    """A state that "restored" cannot pass by accident: UNet training, one block trainable."""
    model.unet.train().requires_grad_(False)
    model.unet.conv_in.requires_grad_(True)


# ------------------------------------------------------------------------------------------ LoRA


def test_lora_lowers_the_loss_and_leaves_the_model_bit_exact(model, images, seeded):
    _mixed_state(model)
    before = snapshot(model)
    base_loss = held_out_loss(model, images)

    weights = train_lora(model, images, LORA, generator=seeded(0))

    assert_bit_exact(model, before)
    assert len(weights.losses) == LORA.steps
    ups = [t for name, t in weights.state_dict.items() if "lora_B" in name]
    assert ups and all(t.dtype == torch.float32 for t in ups)
    assert any(t.abs().max() > 0 for t in ups)  # B starts at zero: the adapters moved
    with installed_lora(model, weights.config, weights.state_dict):
        tuned_loss = held_out_loss(model, images)
    assert tuned_loss < base_loss
    assert_bit_exact(model, before)


def test_lora_same_seed_same_samples_and_the_model_is_unchanged_by_sampling(model, images, seeded):
    first = train_lora(model, images, LORA, generator=seeded(0))
    again = train_lora(model, images, LORA, generator=seeded(0))
    other = train_lora(model, images, LORA, generator=seeded(1))
    assert all(torch.equal(t, again.state_dict[k]) for k, t in first.state_dict.items())
    assert not all(torch.equal(t, other.state_dict[k]) for k, t in first.state_dict.items())

    before = snapshot(model)
    samples = sample_lora(model, first, **SAMPLING, generator=seeded(5))
    repeat = sample_lora(model, again, **SAMPLING, generator=seeded(5))
    assert_bit_exact(model, before)
    assert samples.shape == (2, 3, 16, 20) and 0 <= samples.min() and samples.max() <= 1
    assert torch.equal(samples, repeat)


def test_saved_lora_loads_through_diffusers_and_reproduces_the_samples(
    model, tiny_model_dir, images, seeded, tmp_path
):
    config = dataclasses.replace(LORA, alpha=8.0)
    weights = train_lora(model, images, config, generator=seeded())
    path = weights.save(tmp_path)
    assert path == tmp_path / LORA_WEIGHTS_FILE
    ours = sample_lora(model, weights, **SAMPLING, generator=seeded(5))

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)

    def theirs():
        run = {"num_inference_steps": 3, "generator": seeded(5), "output_type": "pt"}
        prompts = [LORA.instance_prompt] * 2
        return pipeline(prompts, height=16, width=24, **run).images[..., :16, :20]

    base = theirs()
    pipeline.load_lora_weights(tmp_path)
    assert pipeline.unet.peft_config["default_0"].lora_alpha == 8  # from the file's metadata
    assert torch.equal(theirs(), ours)
    assert not torch.equal(base, ours)


def test_installed_lora_is_removed_after_an_error_and_refuses_a_second_adapter(model):
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), installed_lora(model, LORA):
        with pytest.raises(ValueError, match="already has adapters"):
            with installed_lora(model, LORA):
                pass
        raise RuntimeError("inside")
    assert_bit_exact(model, before)


def test_weights_that_do_not_fit_are_refused_and_the_model_restored(model, seeded, images):
    weights = train_lora(model, images, dataclasses.replace(LORA, steps=1), generator=seeded())
    before = snapshot(model)
    lacking = dict(list(weights.state_dict.items())[2:])
    for state_dict in (lacking, weights.state_dict | {"nowhere.lora_A.weight": torch.zeros(4, 4)}):
        with pytest.raises(ValueError, match="do not fit this unet"):
            with installed_lora(model, LORA, state_dict):
                pass
    assert_bit_exact(model, before)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rank": 0}, "rank must be a whole number ≥ 1"),
        ({"steps": 0}, "steps must be a whole number ≥ 1"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"alpha": -1.0}, "alpha must be > 0"),
    ],
)
def test_lora_config_is_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**settings)


def test_the_gpu_preset_is_the_diffusers_examples_recipe():
    gpu = LORA_PRESETS["gpu"]
    assert (gpu.rank, gpu.lora_alpha, gpu.learning_rate, gpu.steps) == (4, 4.0, 1e-4, 500)
    assert gpu.peft_config("sd").target_modules == {"to_k", "to_q", "to_v", "to_out.0"}


# ------------------------------------------------------------------------------------ DreamBooth


def test_dreambooth_trains_a_copy_lowers_the_loss_and_never_touches_the_model(
    model, images, seeded
):
    _mixed_state(model)
    before = snapshot(model)
    base_loss = held_out_loss(model, images)

    tuned = train_dreambooth(model, images, DREAMBOOTH, generator=seeded(0))

    assert_bit_exact(model, before)
    assert tuned.part == "unet" and tuned.denoiser is not model.unet
    moved = [
        key
        for key, value in tuned.denoiser.state_dict().items()
        if not torch.equal(value, before["unet"]["weights"][key])
    ]
    assert moved
    swapped = StableDiffusion(
        model.vae, tuned.denoiser, model.text_encoder, model.tokenizer, model.scheduler
    )
    assert held_out_loss(swapped, images) < base_loss


def test_dreambooth_with_prior_preservation_same_seed_same_samples(model, images, seeded):
    config = DreamBoothConfig(
        learning_rate=1e-4, steps=2, num_class_images=2, class_inference_steps=2
    )
    before = snapshot(model)
    first = train_dreambooth(model, images, config, generator=seeded(0))
    again = train_dreambooth(model, images, config, generator=seeded(0))
    assert_bit_exact(model, before)
    samples = sample_dreambooth(model, first, **SAMPLING, generator=seeded(5))
    assert torch.equal(samples, sample_dreambooth(model, again, **SAMPLING, generator=seeded(5)))
    assert samples.shape == (2, 3, 16, 20)


# -------------------------------------------------------------------------------------- shells


def _mimic(*args, model_dir):
    common = ("--train-steps", "2", "--num-inference-steps", "2", "--num-images", "2")
    return main(["mimic", *map(str, args), *common, "--model", str(model_dir), "--device", "cpu"])


def test_cli_lora_and_dreambooth_write_images_and_only_small_files(
    image_folder, tmp_path, tiny_model_dir, capsys
):
    inputs = image_folder("a.png", "b.png")
    assert _mimic("lora", inputs, "-o", tmp_path / "lora", model_dir=tiny_model_dir) == 0
    written = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert written == ["lora-000.png", "lora-001.png", LORA_WEIGHTS_FILE]

    out = tmp_path / "db"
    assert _mimic("dreambooth", inputs, "-o", out, model_dir=tiny_model_dir) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dreambooth-000.png", "dreambooth-001.png"]
    assert _mimic("dreambooth", inputs, "-o", out, "--save-unet", model_dir=tiny_model_dir) == 0
    assert (out / "unet" / "config.json").is_file()
    assert "fine-tuned the unet on 2 images" in capsys.readouterr().out


def test_cli_refuses_a_bad_setting_before_loading_a_model(image_folder, tmp_path, capsys):
    inputs = image_folder("a.png")
    code = main(["mimic", "lora", str(inputs), "-o", str(tmp_path / "o"), "--rank", "0"])
    assert code == 2 and "rank must be a whole number ≥ 1" in capsys.readouterr().err


def test_evaluate_lora_gives_rows_and_resumes_without_training(
    image_folder, tmp_path, tiny_model_dir, monkeypatch
):
    assert SCENARIOS["lora"].per_image is False and "dreambooth" in SCENARIOS
    inputs = image_folder("a.png", "b.png", size=(16, 16))
    out = tmp_path / "eval"
    args = [
        "evaluate", str(inputs), "-o", str(out), "--model", str(tiny_model_dir),
        "--device", "cpu", "--methods", "noise", "--scenarios", "lora", "--eps", "8",
        "--train-steps", "2", "--num-images", "2", "--metrics", "psnr",
    ]  # fmt: skip
    assert main(args) == 0
    rows = (out / "results.csv").read_text().splitlines()
    lora_rows = [row for row in rows if ",lora,lora," in row]
    assert {"generated-0", "generated-1"} <= {row.split(",")[6] for row in lora_rows}

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(scenarios_module, "lora", no_training)
    assert main(args) == 0
    assert (out / "results.csv").read_text().splitlines() == rows
