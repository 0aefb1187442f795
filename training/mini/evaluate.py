"""Measure the shipped model on held-out images, per group, through the ordinary diffusers loaders.

Figures (written to ``metrics.json`` beside the model, and logged):

- VAE reconstruction PSNR (8-bit, [0, 1] scale) and SSIM of posterior-mode reconstructions.
- The UNet's epsilon-prediction MSE averaged over timesteps 0, 25, ..., 975 (fixed noise, the
  image's own caption) against the MSE of predicting zero noise; the bar is a ratio <= 0.7.
- SDEdit: ``StableDiffusionImg2ImgPipeline`` at strength 0.3, 50 DDIM steps (15 run), fixed seed,
  the image's own caption, at guidance 1 (the paper's protocol) and 7.5 (diffusers' default);
  SSIM of the output to its input, next to the SSIM between held-out images of different source
  files of the same group, as a floor for "unrelated".

Everything runs in float32 on the CPU: a plain ``from_pretrained`` upcasts the fp16 files.
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from skimage.metrics import structural_similarity

from . import data, paths, prepare, unet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The measurement protocol; the defaults are those of the figures in the model card."""

    seed: int = 0  # of the SDEdit generator
    strength: float = 0.3  # SDEdit's
    num_inference_steps: int = 50  # DDIM steps of the full schedule; strength x this many run
    guidance_scales: tuple[float, ...] = (1.0, 7.5)  # the first is used for the sample sheet
    denoising_timesteps: tuple[int, ...] = tuple(range(0, 1000, 25))


def _uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between uint8 image batches (computed in float, no wrap-around)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM between (N, H, W, 3) uint8 batches (scikit-image's default 7×7 window)."""
    return np.asarray(
        [
            structural_similarity(x, y, channel_axis=2, data_range=255)
            for x, y in zip(a, b, strict=True)
        ]
    )


def _file_sizes(folder: Path) -> dict[str, int]:
    sizes = {}
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        sizes[part] = sum(f.stat().st_size for f in (folder / part).iterdir())
    sizes["total"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return sizes


@torch.no_grad()
def evaluate(folders: paths.Folders = paths.DEFAULT, settings: Settings = Settings()) -> dict:
    """Measure the exported model in ``folders.shipped`` and write ``metrics.json`` there."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    pipe = StableDiffusionPipeline.from_pretrained(
        folders.shipped, safety_checker=None, requires_safety_checker=False
    )
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    crops = data.Crops(folders)
    scale = pipe.vae.config.scaling_factor
    metrics = {
        "parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("vae", "unet", "text_encoder")
        },
        "file_bytes": _file_sizes(folders.shipped),
        "held_out_crops": {},
        "vae_psnr_db": {},
        "vae_ssim": {},
        "denoising_mse": {},
        "zero_noise_mse": {},
        "denoising_ratio": {},
        "sdedit_ssim": {f"guidance_{g:g}": {} for g in settings.guidance_scales},
        "unrelated_pair_ssim": {},
    }
    samples = []
    for group, rows in crops.test_by_group(10**6).items():
        x = crops.pixels(rows)
        captions = [crops.captions[i] for i in rows]
        original = _uint8(x)
        posterior = pipe.vae.encode(x).latent_dist
        recon = _uint8(pipe.vae.decode(posterior.mode()).sample)
        metrics["held_out_crops"][group] = len(rows)
        metrics["vae_psnr_db"][group] = float(psnr(original, recon).mean())
        metrics["vae_ssim"][group] = float(ssim(original, recon).mean())

        ids = unet.token_ids(pipe.tokenizer, captions)
        mse, zero = unet.denoising_mse(
            pipe.unet,
            pipe.text_encoder,
            posterior.mode() * scale,
            ids,
            pipe.scheduler,
            settings.denoising_timesteps,
        )
        metrics["denoising_mse"][group], metrics["zero_noise_mse"][group] = mse, zero
        metrics["denoising_ratio"][group] = mse / zero

        pil = [Image.fromarray(image) for image in original]
        for guidance in settings.guidance_scales:
            out = img2img(
                prompt=captions,
                image=pil,
                strength=settings.strength,
                num_inference_steps=settings.num_inference_steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(settings.seed),
                output_type="np",
            ).images
            edited = (out * 255).round().astype(np.uint8)
            metrics["sdedit_ssim"][f"guidance_{guidance:g}"][group] = float(
                ssim(original, edited).mean()
            )
            if guidance == settings.guidance_scales[0]:
                samples.append(
                    np.concatenate(
                        [
                            np.concatenate(list(row), axis=1)
                            for row in (original[:8], recon[:8], edited[:8])
                        ],
                        axis=0,
                    )
                )
        # Held-out photo and wallpaper files contribute CROPS_HELD_OUT consecutive crops each, so
        # shifting by that many pairs every crop with a crop of a different file.
        metrics["unrelated_pair_ssim"][group] = float(
            ssim(original, np.roll(original, prepare.CROPS_HELD_OUT, axis=0)).mean()
        )
        log.info(
            "%s: %d crops, vae psnr %.2f dB, denoising ratio %.3f, sdedit ssim %s",
            group,
            len(rows),
            metrics["vae_psnr_db"][group],
            metrics["denoising_ratio"][group],
            {g: round(v[group], 3) for g, v in metrics["sdedit_ssim"].items()},
        )
    (folders.shipped / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    # Rows per group: held-out input, VAE reconstruction, SDEdit (strength 0.3, guidance 1).
    folders.runs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(samples, axis=0)).save(folders.runs / "eval_samples.png")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics
