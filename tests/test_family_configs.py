"""The random-weight configurations of SDXL, SD3/3.5 and FLUX.1 make working diffusers pipelines.

Each tiny family is built from ``random_weights``, assembled into its diffusers text-to-image and
image-to-image pipelines, written with ``save_pretrained``, read back offline with
``DiffusionPipeline.from_pretrained`` and run for two steps at 32². The full-size configurations
are not built here (bench/families.py measures them); their parts are checked to fit together.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    FluxImg2ImgPipeline,
    FluxPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from transformers import CLIPTokenizer, T5TokenizerFast

from mimicshield.models import random_weights
from mimicshield.models.random_weights import (
    PART_CLASSES,
    random_parts,
    write_test_t5_tokenizer,
    write_test_tokenizer,
)

SIZE = 32  # pixels; the tiny VAEs halve it once

#: test name → (family, configuration, {task: pipeline class}, parts left out)
PIPELINES = {
    "sdxl": (
        "sdxl",
        random_weights.TINY_SDXL,
        {"text2img": StableDiffusionXLPipeline, "img2img": StableDiffusionXLImg2ImgPipeline},
        (),
    ),
    "sd3": (
        "sd3",
        random_weights.TINY_SD3,
        {"text2img": StableDiffusion3Pipeline, "img2img": StableDiffusion3Img2ImgPipeline},
        (),
    ),
    # SD3 runs without its 4.7 B-parameter T5 (zeros stand in for its tokens).
    "sd3-without-t5": (
        "sd3",
        random_weights.TINY_SD3,
        {"text2img": StableDiffusion3Pipeline, "img2img": StableDiffusion3Img2ImgPipeline},
        ("text_encoder_3", "tokenizer_3"),
    ),
    "flux": (
        "flux",
        random_weights.TINY_FLUX,
        {"text2img": FluxPipeline, "img2img": FluxImg2ImgPipeline},
        (),
    ),
}

SDXL_CONFIGS = {"TINY_SDXL": random_weights.TINY_SDXL, "SDXL": random_weights.SDXL}
SD3_CONFIGS = {
    name: getattr(random_weights, name)
    for name in ("TINY_SD3", "SD3_MEDIUM", "SD35_MEDIUM", "SD35_LARGE")
}
FLUX_CONFIGS = {"TINY_FLUX": random_weights.TINY_FLUX, "FLUX_DEV": random_weights.FLUX_DEV}


def _components(family: str, config: dict, left_out: tuple[str, ...], folder) -> dict:
    """The parts of ``config`` and a tokenizer for each text encoder, ``None`` for ``left_out``."""
    components = random_parts(family, config, seed=0)
    for name in [part for part in config if part.startswith("text_encoder")]:
        suffix = name.removeprefix("text_encoder")
        tokenizer_folder = folder / f"tokenizer{suffix}"
        tokenizer_folder.mkdir()
        if PART_CLASSES[family][name].endswith("T5EncoderModel"):
            write_test_t5_tokenizer(tokenizer_folder)
            components[f"tokenizer{suffix}"] = T5TokenizerFast.from_pretrained(tokenizer_folder)
        else:
            write_test_tokenizer(tokenizer_folder)
            components[f"tokenizer{suffix}"] = CLIPTokenizer.from_pretrained(tokenizer_folder)
    return components | dict.fromkeys(left_out)


def _generate(pipeline: DiffusionPipeline, task: str, seed: int) -> torch.Tensor:
    """Two denoising steps at 32² as a (1, 3, 32, 32) tensor."""
    arguments = {
        "prompt": "a painting of a squirrel",
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt",
        "height": SIZE,  # FLUX's img2img would otherwise resize to its default 128 latents
        "width": SIZE,
    }
    if task == "text2img":
        arguments |= {"num_inference_steps": 2}
    else:  # strength 0.5 of 4 steps: the last 2
        image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
        arguments |= {"image": image, "strength": 0.5, "num_inference_steps": 4}
    return pipeline(**arguments).images


@pytest.mark.parametrize("task", ["text2img", "img2img"])
@pytest.mark.parametrize("name", PIPELINES)
def test_tiny_family_pipeline_saves_loads_and_generates(name, task, tmp_path):
    family, config, classes, left_out = PIPELINES[name]
    pipeline = classes[task](**_components(family, config, left_out, tmp_path))
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(tmp_path / "saved")

    # diffusers writes no entry for a part left out (None), so loading must leave it out again.
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved", **dict.fromkeys(left_out))
    loaded.set_progress_bar_config(disable=True)

    assert type(loaded) is classes[task]
    assert all(getattr(loaded, part) is None for part in left_out)
    image = _generate(loaded, task, seed=0)
    assert image.shape == (1, 3, SIZE, SIZE)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert torch.equal(_generate(loaded, task, seed=0), image)
    assert not torch.equal(_generate(loaded, task, seed=1), image)
    # The loaded pipeline is the one that was saved (up to round-off: weights read from a file
    # can sit at unaligned addresses, where the CPU kernels sum in another order).
    torch.testing.assert_close(_generate(pipeline, task, seed=0), image, rtol=1e-5, atol=1e-5)


def test_t5_tokenizer_loads_offline_pads_truncates_and_fits_the_tiny_t5(tmp_path):
    write_test_t5_tokenizer(tmp_path)
    tokenizer = T5TokenizerFast.from_pretrained(tmp_path)
    prompts = ["a painting, 1887", "x" * 40]

    ids = tokenizer(
        prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    ).input_ids

    assert ids.shape == (2, 16)
    for config in (
        random_weights.TINY_SD3["text_encoder_3"],
        random_weights.TINY_FLUX["text_encoder_2"],
    ):
        assert int(ids.max()) < config["vocab_size"]
    assert tokenizer.unk_token_id not in ids.tolist()[0]
    short = ids[0].tolist()
    end = short.index(tokenizer.eos_token_id)
    assert set(short[end + 1 :]) == {tokenizer.pad_token_id}
    assert ids[1, -1] == tokenizer.eos_token_id  # truncated, still terminated
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == prompts[0]


def _pooled_width(clip: dict) -> int:
    return clip.get("projection_dim", clip["hidden_size"])


@pytest.mark.parametrize("config", SDXL_CONFIGS.values(), ids=SDXL_CONFIGS)
def test_sdxl_configuration_parts_fit_together(config):
    unet, clip, clip_2 = config["unet"], config["text_encoder"], config["text_encoder_2"]
    assert set(config) == set(PART_CLASSES["sdxl"])
    assert unet["in_channels"] == config["vae"]["latent_channels"]
    assert unet["cross_attention_dim"] == clip["hidden_size"] + clip_2["hidden_size"]
    # six size/crop numbers, each embedded, beside the second encoder's pooled vector
    time_width = 6 * unet["addition_time_embed_dim"]
    assert unet["projection_class_embeddings_input_dim"] == time_width + _pooled_width(clip_2)


@pytest.mark.parametrize("config", SD3_CONFIGS.values(), ids=SD3_CONFIGS)
def test_sd3_configuration_parts_fit_together(config):
    transformer, t5 = config["transformer"], config["text_encoder_3"]
    clips = (config["text_encoder"], config["text_encoder_2"])
    assert set(config) == set(PART_CLASSES["sd3"])
    assert transformer["in_channels"] == config["vae"]["latent_channels"]
    heads_width = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    assert transformer["caption_projection_dim"] == heads_width
    assert transformer["pooled_projection_dim"] == sum(_pooled_width(clip) for clip in clips)
    assert transformer["joint_attention_dim"] == t5["d_model"]
    assert t5["d_model"] >= sum(clip["hidden_size"] for clip in clips)  # CLIPs padded to T5


@pytest.mark.parametrize("config", FLUX_CONFIGS.values(), ids=FLUX_CONFIGS)
def test_flux_configuration_parts_fit_together(config):
    transformer, t5 = config["transformer"], config["text_encoder_2"]
    assert set(config) == set(PART_CLASSES["flux"])
    assert transformer["in_channels"] == 4 * config["vae"]["latent_channels"]  # 2×2 per token
    assert transformer["pooled_projection_dim"] == config["text_encoder"]["hidden_size"]
    assert transformer["joint_attention_dim"] == t5["d_model"]
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert transformer["guidance_embeds"] and config["scheduler"]["use_dynamic_shifting"]
