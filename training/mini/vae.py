"""Train the AutoencoderKL: 64x64 RGB <-> 4x16x16 latents (downsampling factor 4).

Loss: L1 + L2 reconstruction plus a small KL term (SD's recipe without the perceptual and
adversarial terms). The VAE is fully convolutional (no attention in its mid block), so most steps
use random 32x32 crops, which cost a quarter of a full image; the last steps use full 64x64
images so the normalisation statistics match the working resolution.
"""

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL

from . import checkpoint, data, paths

log = logging.getLogger(__name__)

CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=paths.RESOLUTION,
    mid_block_add_attention=False,
)


@dataclass(frozen=True)
class Settings:
    """Training hyperparameters; the defaults are the shipped model's."""

    steps: int = 5000
    batch: int = 32  # images per step
    crop: int = 32  # pixels; the side of the random crops most steps train on
    full_size_fraction: float = 0.10  # the last part of training runs on full 64x64 images
    lr: float = 1e-3  # peak, reached after ``warmup`` steps, then cosine to 0
    warmup: int = 100  # steps
    kl_weight: float = 1e-6
    eval_every: int = 250  # steps between held-out PSNR logs
    save_every: int = 100  # steps between checkpoints
    seed: int = 0  # initial weights and every random draw of training


def build(config: dict = CONFIG) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL with ``config`` (by default the miniature's)."""
    return AutoencoderKL(**config)


def loss_terms(
    vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction (L1 + L2, per pixel) and KL (summed over the latent, per pixel)."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
    kl = posterior.kl().sum() / x[:, :1].numel()
    return rec, kl


@torch.no_grad()
def psnr(vae: AutoencoderKL, crops: data.Crops, index: np.ndarray) -> float:
    """Mean PSNR (dB, [0, 1] scale, 8-bit quantised) of posterior-mode reconstructions."""
    values = []
    for chunk in np.array_split(index, max(1, len(index) // 64)):
        x = crops.pixels(chunk)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        a = ((x + 1) * 127.5).round()
        b = ((recon.clamp(-1, 1) + 1) * 127.5).round()
        mse = (a - b).pow(2).mean(dim=(1, 2, 3)) / 255.0**2
        values.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return torch.cat(values).mean().item()


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up over ``settings.warmup`` steps, then cosine decay to 0 at the last step."""
    warmup = settings.warmup
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    folders: paths.Folders = paths.DEFAULT, settings: Settings = Settings(), config: dict = CONFIG
) -> AutoencoderKL:
    """Train (or resume) to ``settings.steps``; the state goes to ``folders.vae_run``/last.pt.

    ``config`` is the AutoencoderKL's (the flow-matching sibling trains one with 16 channels).
    """
    torch.manual_seed(settings.seed)
    crops = data.Crops(folders)
    probe = np.concatenate(list(crops.test_by_group(96).values()))
    vae = build(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    parts = dict(model=vae, optimizer=optimizer)
    generator = torch.Generator().manual_seed(settings.seed)
    step, elapsed = checkpoint.restore_training(folders.vae_run / "last.pt", parts, generator)
    log.info(
        "vae: %d parameters, %d training crops",
        sum(p.numel() for p in vae.parameters()),
        len(crops.train_index),
    )
    vae.train()
    start = time.monotonic() - elapsed
    while step < settings.steps:
        full_size = step >= settings.steps * (1 - settings.full_size_fraction)
        size = paths.RESOLUTION if full_size else settings.crop
        rows = data.draw_rows(crops.train_index, settings.batch, generator)
        batch = data.random_crop_flip(crops.pixels(rows), size, generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        rec, kl = loss_terms(vae, batch, generator)
        loss = rec + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 20 == 0:
            log.info(
                "vae step %d size %d rec %.4f kl %.1f lr %.2e %.0fs",
                step,
                size,
                rec.item(),
                kl.item(),
                learning_rate(step, settings),
                time.monotonic() - start,
            )
        if step % settings.eval_every == 0 or step == settings.steps:
            vae.eval()
            log.info("vae step %d held-out psnr %.2f dB", step, psnr(vae, crops, probe))
            vae.train()
        if step % settings.save_every == 0 or step == settings.steps:
            checkpoint.save_training(
                folders.vae_run / "last.pt", parts, generator, step, time.monotonic() - start
            )
    vae.eval()
    return vae


def load_trained(folders: paths.Folders = paths.DEFAULT, config: dict = CONFIG) -> AutoencoderKL:
    """The VAE (built from ``config``) from the last checkpoint, in eval mode."""
    vae = build(config)
    vae.load_state_dict(checkpoint.load(folders.vae_run / "last.pt")["model"])
    return vae.eval()
