"""Train the AutoencoderKL: 64x64 RGB <-> 4x16x16 latents (downsampling factor 4).

Loss: L1 + L2 reconstruction plus a small KL term (SD's recipe without the perceptual and
adversarial terms). The VAE is fully convolutional (no attention in its mid block), so most steps
use random 32x32 crops, which cost a quarter of a full image; the last steps use full 64x64
images so the normalisation statistics match the working resolution.
"""

import logging
import math
import time

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

STEPS = 5000
BATCH = 32
CROP = 32
FULL_SIZE_FRACTION = 0.10  # the last part of training runs on full 64x64 images
LR = 1e-3
KL_WEIGHT = 1e-6
EVAL_EVERY = 250
SAVE_EVERY = 100


def build() -> AutoencoderKL:
    return AutoencoderKL(**CONFIG)


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


def learning_rate(step: int, steps: int) -> float:
    warmup = 100
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(steps: int = STEPS, seed: int = 0) -> AutoencoderKL:
    """Train (or resume) to ``steps``; the state is saved to training/runs/vae/last.pt."""
    torch.manual_seed(seed)
    crops = data.Crops()
    probe = np.concatenate(list(crops.test_by_group(96).values()))
    vae = build()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    step, elapsed = 0, 0.0
    state = checkpoint.load(paths.VAE_RUN / "last.pt")
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed = state["step"], state["elapsed"]
    log.info(
        "vae: %d parameters, %d training crops",
        sum(p.numel() for p in vae.parameters()),
        len(crops.train_index),
    )
    rng = np.random.default_rng(seed + step)
    vae.train()
    start = time.monotonic() - elapsed
    while step < steps:
        size = CROP if step < steps * (1 - FULL_SIZE_FRACTION) else paths.RESOLUTION
        batch = data.random_crop_flip(
            crops.pixels(rng.choice(crops.train_index, BATCH)), size, generator
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        rec, kl = loss_terms(vae, batch, generator)
        loss = rec + KL_WEIGHT * kl
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
                learning_rate(step, steps),
                time.monotonic() - start,
            )
        if step % EVAL_EVERY == 0 or step == steps:
            vae.eval()
            log.info("vae step %d held-out psnr %.2f dB", step, psnr(vae, crops, probe))
            vae.train()
        if step % SAVE_EVERY == 0 or step == steps:
            state = dict(
                model=vae.state_dict(),
                optimizer=optimizer.state_dict(),
                generator=generator.get_state(),
                step=step,
                elapsed=time.monotonic() - start,
            )
            checkpoint.save(paths.VAE_RUN / "last.pt", state)
    vae.eval()
    return vae


def load_trained() -> AutoencoderKL:
    """The VAE from the last checkpoint, in eval mode."""
    vae = build()
    vae.load_state_dict(checkpoint.load(paths.VAE_RUN / "last.pt")["model"])
    return vae.eval()
