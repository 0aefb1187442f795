"""Train the UNet2DConditionModel and the CLIPTextModel on precomputed VAE latents.

Stable Diffusion's recipe at miniature scale: a scaled-linear DDPM schedule (1000 steps,
beta 0.00085-0.012), epsilon prediction, uniform timesteps, MSE loss, prompts padded to 77 tokens
without an attention mask (as the diffusers pipelines encode them), 10 % of captions dropped to
the empty prompt so classifier-free guidance works. Unlike SD the text encoder is trained
jointly, since there is no pretrained one. An exponential moving average of the weights is kept
and is what gets exported.

The VAE is run once over the training crops and their mirror images (``encode_latents``); each
step then samples z = mean + std * noise from the stored posterior, which is what SD's training
does with a live encoder, at a fraction of the cost.
"""

import copy
import logging
import math
import time

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from . import checkpoint, data, paths, tokenizer, vae

log = logging.getLogger(__name__)

SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
)

UNET_CONFIG = dict(
    sample_size=paths.RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' name for the number of heads in this class
    norm_num_groups=32,
)

TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=tokenizer.MODEL_MAX_LENGTH,
    projection_dim=64,
)

STEPS = 4000
BATCH = 32
LR = 5e-4
WARMUP = 200
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
EVAL_EVERY = 500
SAVE_EVERY = 100
EVAL_TIMESTEPS = tuple(range(0, 1000, 50))


def build_text_encoder(tok) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(config)


def token_ids(tok, captions: list[str]) -> torch.Tensor:
    """Prompts tokenized exactly as StableDiffusionPipeline does: padded/truncated to 77."""
    return tok(
        captions,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_latents() -> None:
    """Store the posterior mean/std of every crop and its mirror image, and the scaling factor."""
    if paths.LATENTS.exists():
        log.info("latents present: %s", paths.LATENTS)
        return
    crops = data.Crops()
    model = vae.load_trained()
    index = np.arange(len(crops.captions))
    means, stds = [], []
    for flip in (False, True):
        mean, std = [], []
        for chunk in np.array_split(index, len(index) // 128):
            x = crops.pixels(chunk)
            posterior = model.encode(x.flip(-1) if flip else x).latent_dist
            mean.append(posterior.mean)
            std.append(posterior.std)
        means.append(torch.cat(mean))
        stds.append(torch.cat(std))
        log.info("encoded %d crops (mirrored: %s)", len(index), flip)
    mean, std = torch.stack(means, 1), torch.stack(stds, 1)  # (N, 2, 4, 16, 16)
    train = torch.as_tensor(crops.train_index)
    # Variance of a posterior sample = variance of the means + mean posterior variance.
    variance = mean[train].var() + std[train].pow(2).mean()
    scaling_factor = float(1.0 / variance.sqrt())
    log.info("latent std %.4f -> scaling_factor %.5f", variance.sqrt().item(), scaling_factor)
    checkpoint.save(paths.LATENTS, dict(mean=mean, std=std, scaling_factor=scaling_factor, step=0))


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))
    )


@torch.no_grad()
def denoising_mse(
    unet,
    text_encoder,
    latents: torch.Tensor,
    ids: torch.Tensor,
    scheduler,
    timesteps: tuple[int, ...] = EVAL_TIMESTEPS,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean epsilon-prediction MSE over ``timesteps``, and that of predicting zero noise.

    ``latents`` are already scaled. Noise comes from a fixed generator, so figures compare across
    checkpoints.
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = text_encoder(ids)[0]
    model_err, zero_err = [], []
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        steps = torch.full((len(latents),), t, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, steps)
        for part in torch.split(torch.arange(len(latents)), 128):
            pred = unet(noisy[part], steps[part], hidden[part]).sample
            model_err.append((pred - noise[part]).pow(2).mean(dim=(1, 2, 3)))
        zero_err.append(noise.pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(model_err).mean().item(), torch.cat(zero_err).mean().item()


def _probe(
    crops: data.Crops, store: dict, ids: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Held-out latents (posterior means, not mirrored, scaled) and prompts, per group."""
    probe = {}
    for group, rows in crops.test_by_group(64).items():
        rows = torch.as_tensor(rows)
        probe[group] = (store["mean"][rows, 0] * store["scaling_factor"], ids[rows])
    return probe


def train(steps: int = STEPS, seed: int = 0) -> None:
    """Train (or resume) to ``steps``; the state is saved to training/runs/unet/last.pt."""
    torch.manual_seed(seed)
    crops = data.Crops()
    tok = tokenizer.build(crops.captions)
    store = torch.load(paths.LATENTS, weights_only=False)
    scale = store["scaling_factor"]
    ids = token_ids(tok, crops.captions)
    empty = token_ids(tok, [""])[0]
    probe = _probe(crops, store, ids)
    scheduler = DDPMScheduler(**SCHEDULE)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = build_text_encoder(tok)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    ema_unet, ema_text = (
        copy.deepcopy(unet).requires_grad_(False),
        copy.deepcopy(text_encoder).requires_grad_(False),
    )
    generator = torch.Generator().manual_seed(seed)
    step, elapsed = 0, 0.0
    state = checkpoint.load(paths.UNET_RUN / "last.pt")
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed = state["step"], state["elapsed"]
    log.info(
        "unet: %d parameters, text encoder: %d, scaling_factor %.5f",
        sum(p.numel() for p in unet.parameters()),
        sum(p.numel() for p in text_encoder.parameters()),
        scale,
    )
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    rng = np.random.default_rng(seed + step)
    unet.train()
    text_encoder.train()
    start = time.monotonic() - elapsed
    while step < steps:
        rows = torch.as_tensor(rng.choice(crops.train_index, BATCH))
        mirror = torch.randint(0, 2, (BATCH,), generator=generator)
        mean, std = store["mean"][rows, mirror], store["std"][rows, mirror]
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
        prompt = ids[rows].clone()
        prompt[torch.rand(BATCH, generator=generator) < CAPTION_DROPOUT] = empty
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (BATCH,), generator=generator
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, text_encoder(prompt)[0]).sample
        loss = (pred - noise).pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if step % 20 == 0:
            log.info(
                "unet step %d loss %.4f lr %.2e %.0fs",
                step,
                loss.item(),
                learning_rate(step, steps),
                time.monotonic() - start,
            )
        if step % EVAL_EVERY == 0 or step == steps:
            for group, (z, prompt_ids) in probe.items():
                mse, zero = denoising_mse(
                    ema_unet.eval(), ema_text.eval(), z, prompt_ids, scheduler
                )
                log.info(
                    "unet step %d held-out %s: ema denoising mse %.4f vs zero-noise %.4f "
                    "(ratio %.3f)",
                    step,
                    group,
                    mse,
                    zero,
                    mse / zero,
                )
        if step % SAVE_EVERY == 0 or step == steps:
            state = dict(
                unet=unet.state_dict(),
                text_encoder=text_encoder.state_dict(),
                ema_unet=ema_unet.state_dict(),
                ema_text=ema_text.state_dict(),
                optimizer=optimizer.state_dict(),
                generator=generator.get_state(),
                step=step,
                elapsed=time.monotonic() - start,
            )
            checkpoint.save(paths.UNET_RUN / "last.pt", state)


def load_trained(tok) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """The EMA UNet and text encoder from the last checkpoint, in eval mode."""
    state = checkpoint.load(paths.UNET_RUN / "last.pt")
    unet = UNet2DConditionModel(**UNET_CONFIG)
    unet.load_state_dict(state["ema_unet"])
    text_encoder = build_text_encoder(tok)
    text_encoder.load_state_dict(state["ema_text"])
    return unet.eval(), text_encoder.eval()
