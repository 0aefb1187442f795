"""Measure the shipped flow model on held-out images, per group, through the diffusers loaders.

Figures (written to ``metrics.json`` beside the model, and logged):

- VAE reconstruction PSNR (8-bit) and SSIM of posterior-mode reconstructions.
- The transformer's velocity MSE averaged over sigma = 0.05, 0.15, ..., 0.95 (fixed noise, the
  crop's own caption), on held-out crops and on as many training crops of the same group, next to
  the same figure for the untrained model (the training's initial weights) and for predicting
  zero velocity.
- SDEdit: ``StableDiffusion3Img2ImgPipeline`` at strength 0.3 with 50 Euler steps (15 run),
  fixed seed, the crop's own caption, guidance 1 (the protocol of the miniature's figures; add
  7, the pipeline's default, to ``guidance_scales`` for more); SSIM of the output to its input,
  next to the SSIM between held-out crops of different files.
- A sample sheet of text-to-image generations (held-out captions, the pipeline's defaults:
  28 steps, guidance 7) in the run folder.

Everything runs in float32 on the CPU: a plain ``from_pretrained`` upcasts the fp16 files.
"""

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
from PIL import Image

from training.mini import data, prepare
from training.mini import evaluate as mini_evaluate
from training.mini import unet as mini_unet

from . import export, paths, transformer

log = logging.getLogger(__name__)

CHUNK = 64  # crops per img2img call, to bound the attention's memory


@dataclass(frozen=True)
class Settings:
    """The measurement protocol; the defaults are those of the figures in the model card."""

    seed: int = 0  # of the SDEdit and sample generators
    strength: float = 0.3  # SDEdit's
    num_inference_steps: int = 50  # Euler steps of the full schedule; strength x this many run
    guidance_scales: tuple[float, ...] = (1.0,)  # the first is used for the sample sheet
    sigmas: tuple[float, ...] = transformer.EVAL_SIGMAS
    samples: int = 8  # text-to-image samples per group on the sample sheet
    sample_steps: int = 28  # the pipeline's default


def _train_like(crops: data.Crops, held_out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """As many training rows per group as ``held_out`` has, evenly spaced (reproducible)."""
    subsets = {}
    for g, (name, rows) in enumerate(held_out.items()):
        train = crops.train_index[crops.groups[crops.train_index] == g]
        take = np.linspace(0, len(train) - 1, min(len(rows), len(train))).round().astype(int)
        subsets[name] = train[np.unique(take)]
    return subsets


def _sdedit(img2img, pil: list, captions: list[str], guidance: float, settings: Settings):
    """SDEdit outputs as uint8 (N, 64, 64, 3), ``CHUNK`` crops per call, each chunk seeded."""
    out = []
    for start in range(0, len(pil), CHUNK):
        out.append(
            img2img(
                prompt=captions[start : start + CHUNK],
                image=pil[start : start + CHUNK],
                strength=settings.strength,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(settings.seed),
                output_type="np",
            ).images
        )
    return (np.concatenate(out) * 255).round().astype(np.uint8)


@torch.no_grad()
def evaluate(
    folders: paths.Folders = paths.DEFAULT, settings: Settings = Settings(), init_seed: int = 0
) -> dict:
    """Measure the exported model in ``folders.shipped`` and write ``metrics.json`` there.

    ``init_seed`` is the transformer stage's seed, which rebuilds its untrained weights.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    pipe = StableDiffusion3Pipeline.from_pretrained(
        folders.shipped, text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    torch.manual_seed(init_seed)
    untrained = transformer.build(pipe.tokenizer)
    crops = data.Crops(folders)
    shift, scale = pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor
    trained = (pipe.transformer, (pipe.text_encoder, pipe.text_encoder_2))
    metrics = {
        "parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("vae", "transformer", "text_encoder", "text_encoder_2")
        },
        "file_bytes": {
            part: sum(f.stat().st_size for f in (folders.shipped / part).iterdir())
            for part in (*export.PARTS, "scheduler")
        },
        "held_out_crops": {},
        "vae_psnr_db": {},
        "vae_ssim": {},
        "velocity_mse": {},
        "velocity_mse_train_crops": {},
        "velocity_mse_untrained": {},
        "zero_velocity_mse": {},
        "velocity_ratio": {},
        "sdedit_ssim": {f"guidance_{g:g}": {} for g in settings.guidance_scales},
        "unrelated_pair_ssim": {},
    }
    metrics["file_bytes"]["total"] = sum(
        f.stat().st_size for f in folders.shipped.rglob("*") if f.is_file()
    )
    held_out = crops.test_by_group(10**6)
    train_like = _train_like(crops, held_out)
    sheet = []
    for group, rows in held_out.items():
        x = crops.pixels(rows)
        captions = [crops.captions[i] for i in rows]
        original = mini_evaluate._uint8(x)
        posterior = pipe.vae.encode(x).latent_dist
        recon = mini_evaluate._uint8(pipe.vae.decode(posterior.mode()).sample)
        metrics["held_out_crops"][group] = len(rows)
        metrics["vae_psnr_db"][group] = float(mini_evaluate.psnr(original, recon).mean())
        metrics["vae_ssim"][group] = float(mini_evaluate.ssim(original, recon).mean())

        z = (posterior.mode() - shift) * scale
        ids = mini_unet.token_ids(pipe.tokenizer, captions)
        mse, zero = transformer.flow_mse(*trained, z, ids, settings.sigmas)
        before, _ = transformer.flow_mse(untrained[0], untrained[1:], z, ids, settings.sigmas)
        seen = train_like[group]
        if len(seen):  # a group may have no training crops (only in tests)
            z_seen = (pipe.vae.encode(crops.pixels(seen)).latent_dist.mode() - shift) * scale
            ids_seen = mini_unet.token_ids(pipe.tokenizer, [crops.captions[i] for i in seen])
            metrics["velocity_mse_train_crops"][group] = transformer.flow_mse(
                *trained, z_seen, ids_seen, settings.sigmas
            )[0]
        metrics["velocity_mse"][group], metrics["zero_velocity_mse"][group] = mse, zero
        metrics["velocity_mse_untrained"][group] = before
        metrics["velocity_ratio"][group] = mse / zero

        pil = [Image.fromarray(image) for image in original]
        for guidance in settings.guidance_scales:
            edited = _sdedit(img2img, pil, captions, guidance, settings)
            metrics["sdedit_ssim"][f"guidance_{guidance:g}"][group] = float(
                mini_evaluate.ssim(original, edited).mean()
            )
            if guidance == settings.guidance_scales[0]:
                sdedit = edited
        generated = pipe(
            prompt=captions[: settings.samples],
            num_inference_steps=settings.sample_steps,
            generator=torch.Generator().manual_seed(settings.seed),
            output_type="np",
        ).images
        generated = (generated * 255).round().astype(np.uint8)
        n = min(settings.samples, len(rows))
        sheet.append(
            np.concatenate(
                [np.concatenate(list(r[:n]), axis=1) for r in (original, recon, sdedit, generated)]
            )
        )
        # Held-out photo and wallpaper files contribute CROPS_HELD_OUT consecutive crops each, so
        # shifting by that many pairs every crop with a crop of a different file.
        metrics["unrelated_pair_ssim"][group] = float(
            mini_evaluate.ssim(original, np.roll(original, prepare.CROPS_HELD_OUT, axis=0)).mean()
        )
        log.info(
            "%s: %d crops, vae psnr %.2f dB, velocity mse %.3f (train crops %s, untrained %.3f,"
            " zero %.3f), sdedit ssim %s",
            group,
            len(rows),
            metrics["vae_psnr_db"][group],
            mse,
            metrics["velocity_mse_train_crops"].get(group),
            before,
            zero,
            {g: round(v[group], 3) for g, v in metrics["sdedit_ssim"].items()},
        )
    (folders.shipped / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    # Rows per group: held-out input, VAE reconstruction, SDEdit (guidance 1), text-to-image
    # from the same captions.
    folders.runs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(sheet, axis=0)).save(folders.runs / "eval_samples.png")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics
