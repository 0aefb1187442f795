"""The flow-matching miniature's recipe (training/mini_flow) on a few synthetic images, offline.

Two training steps of every offline stage, then: the exported folder loads through diffusers'
SD3 pipelines, the conditioning the transformer is trained with is the pipeline's
``encode_prompt`` output, a batch is a rectified-flow pair, and interrupted-and-resumed runs
equal uninterrupted ones bit for bit.
"""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
from PIL import Image
from test_training_recipe import _assert_same_training_state, _synthetic_sources

from training.mini import checkpoint, data, prepare
from training.mini import paths as mini_paths
from training.mini import unet as mini_unet
from training.mini import vae as mini_vae
from training.mini_flow import evaluate, paths, recipe, transformer, vae

TINY_VAE = vae.Settings(
    steps=2, batch=4, full_size_fraction=0.5, warmup=1, eval_every=2, save_every=2
)
TINY_TRANSFORMER = transformer.Settings(
    steps=2, batch=4, warmup=1, eval_every=2, save_every=2, eval_sigmas=(0.3, 0.8)
)
TINY_EVALUATE = evaluate.Settings(
    num_inference_steps=4, sigmas=(0.3, 0.8), samples=2, sample_steps=2
)
RESOLUTION = mini_paths.RESOLUTION


def _folders(root, data_folder=None) -> paths.Folders:
    """A run's folders under ``root``; ``data_folder`` shares another run's crop cache."""
    return paths.Folders(
        data=data_folder or root / "data",
        runs=root / "runs",
        shipped=root / "shipped",
        sources=root / "packages",  # never read: the crops come from synthetic sources
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> recipe.Recipe:
    """Every stage after ``sources`` and ``prepare``, two training steps each."""
    root = tmp_path_factory.mktemp("flow-recipe")
    run = recipe.Recipe(_folders(root), TINY_VAE, TINY_TRANSFORMER, TINY_EVALUATE)
    prepare.prepare(run.folders, _synthetic_sources(root / "sources"), workers=1)
    stages = list(recipe.STAGES)
    for stage in stages[stages.index("tokenizer") :]:
        recipe.run(stage, run)
    return run


@pytest.fixture(scope="module")
def pipe(trained) -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline.from_pretrained(
        trained.folders.shipped, text_encoder_3=None, tokenizer_3=None
    )


def test_export_is_an_sd3_folder_that_loads_offline_and_generates(trained, pipe):
    folders = trained.folders
    index = json.loads((folders.shipped / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]

    state = checkpoint.load(folders.transformer_run / "last.pt")
    assert state["step"] == TINY_TRANSFORMER.steps
    for part, key in [
        ("transformer", "ema_transformer"),
        ("text_encoder", "ema_text"),
        ("text_encoder_2", "ema_text_2"),
    ]:  # the EMA weights, stored in fp16, loaded back in float32
        for name, weight in getattr(pipe, part).state_dict().items():
            assert weight.dtype == torch.float32
            assert torch.equal(weight, state[key][name].half().float()), (part, name)
    assert pipe.tokenizer.get_vocab() == pipe.tokenizer_2.get_vocab()
    store = torch.load(folders.latents, weights_only=False)
    assert pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.scaling_factor == pytest.approx(store["scaling_factor"])
    assert pipe.vae.config.shift_factor == pytest.approx(store["shift_factor"])

    image = pipe(
        "clip art of red",
        num_inference_steps=2,  # the default size is the working resolution
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(image).all()
    edited = StableDiffusion3Img2ImgPipeline(**pipe.components)(
        "clip art of red",
        image=Image.fromarray((image[0] * 255).round().astype(np.uint8)),
        strength=0.5,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert edited.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(edited).all()

    metrics = json.loads((folders.shipped / "metrics.json").read_text())
    assert set(metrics["vae_psnr_db"]) == set(data.GROUPS)
    assert all(np.isfinite(v) for v in metrics["velocity_mse_untrained"].values())
    assert json.loads((folders.shipped / "held_out.json").read_text())["photo"]


def test_training_conditioning_is_the_pipelines_encode_prompt(pipe):
    captions = ["clip art of red", "", "a wallpaper, blue " * 30]  # the last one is truncated
    ids = mini_unet.token_ids(pipe.tokenizer, captions)
    embeds, pooled = transformer.encode_prompt(
        pipe.text_encoder, pipe.text_encoder_2, ids, pipe.transformer.config.joint_attention_dim
    )
    expected, negative, expected_pooled, negative_pooled = pipe.encode_prompt(
        prompt=captions, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True
    )
    assert embeds.shape == (3, 77 + transformer.MAX_SEQUENCE_LENGTH, 128)
    assert torch.equal(embeds, expected) and torch.equal(pooled, expected_pooled)
    # Dropped captions are trained as the empty prompt, the pipeline's negative prompt.
    assert torch.equal(negative, embeds[[1, 1, 1]])
    assert torch.equal(negative_pooled, pooled[[1, 1, 1]])


def test_a_batch_is_a_rectified_flow_pair():
    latents = torch.randn(5, 2, 16, 4, 4)
    corpus = transformer.Corpus(
        mean=latents,
        std=torch.zeros_like(latents),  # so the sampled latent is the mean
        shift=0.3,
        scale=2.0,
        ids=torch.arange(5)[:, None].repeat(1, 77),
        empty=torch.full((77,), -1),
        train_index=np.arange(5),
    )
    sigmas = transformer.training_sigmas()
    settings = replace(TINY_TRANSFORMER, batch=64)
    noisy, sigma, prompt, target = transformer.draw_batch(
        corpus, sigmas, settings, torch.Generator().manual_seed(0)
    )
    rows = prompt[:, 0]
    kept = rows >= 0
    assert 0 < (~kept).sum() < len(rows)  # some captions are dropped to the empty prompt
    assert torch.isin(sigma, sigmas).all() and sigma.unique().numel() > 1
    # z_t = (1 - sigma) z + sigma e with target e - z: z_t = z + sigma * target for the crop's
    # own normalised latent (of it or its mirror image).
    s = sigma[kept, None, None, None]
    own = (latents[rows[kept]] - corpus.shift) * corpus.scale  # (n, 2, 16, 4, 4)
    error = torch.stack(
        [(noisy[kept] - s * target[kept] - own[:, m]).abs().amax(dim=(1, 2, 3)) for m in (0, 1)]
    )
    assert (error.amin(dim=0) < 1e-5).all()


def test_vae_resume_equals_uninterrupted_run(trained, tmp_path, interrupt_and_resume):
    settings = replace(TINY_VAE, steps=4)
    whole, resumed = (_folders(tmp_path / run, trained.folders.data) for run in ("a", "b"))
    mini_vae.train(whole, settings, vae.CONFIG)
    interrupt_and_resume(
        lambda: mini_vae.train(resumed, settings, vae.CONFIG),
        resumed.vae_run / "last.pt",
        settings.save_every,
    )
    _assert_same_training_state(
        whole.vae_run / "last.pt", resumed.vae_run / "last.pt", settings.steps
    )


def test_transformer_resume_equals_uninterrupted_run(trained, tmp_path, interrupt_and_resume):
    settings = replace(TINY_TRANSFORMER, steps=4)
    whole, resumed = (_folders(tmp_path / run, trained.folders.data) for run in ("a", "b"))
    for folders in (whole, resumed):  # the tokenizer and latents the stage starts from
        shutil.copytree(trained.folders.tokenizer, folders.tokenizer)
        shutil.copy(trained.folders.latents, folders.latents)
    transformer.train(whole, settings)
    interrupt_and_resume(
        lambda: transformer.train(resumed, settings),
        resumed.transformer_run / "last.pt",
        settings.save_every,
    )
    _assert_same_training_state(
        whole.transformer_run / "last.pt", resumed.transformer_run / "last.pt", settings.steps
    )
