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
from dataclasses import dataclass, fields

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

EVAL_TIMESTEPS = tuple(range(0, 1000, 50))


@dataclass(frozen=True)
class Settings:
    """Training hyperparameters; the defaults are the shipped model's."""

    steps: int = 4000
    batch: int = 32  # latents per step
    lr: float = 5e-4  # peak, reached after ``warmup`` steps, then cosine to a tenth of it
    warmup: int = 200  # steps
    weight_decay: float = 0.01  # AdamW's
    caption_dropout: float = 0.1  # fraction of prompts replaced by "" (for guidance)
    ema_decay: float = 0.999  # upper bound; after n steps the decay is (1 + n) / (10 + n)
    eval_every: int = 500  # steps between held-out denoising logs
    eval_timesteps: tuple[int, ...] = EVAL_TIMESTEPS  # the held-out MSE is averaged over these
    save_every: int = 100  # steps between checkpoints
    seed: int = 0  # initial weights and every random draw of training


@dataclass(frozen=True)
class Corpus:
    """What training steps draw from: every crop's stored posterior, and its prompt."""

    mean: torch.Tensor  # (N, 2, 4, 16, 16) posterior means; [:, 1] is of the mirror image
    std: torch.Tensor  # (N, 2, 4, 16, 16) posterior standard deviations
    scale: float  # the latent scaling factor (1 / std of the training latents)
    ids: torch.Tensor  # (N, 77) prompt token ids
    empty: torch.Tensor  # (77,) token ids of the empty prompt
    train_index: np.ndarray  # rows that may be trained on


@dataclass
class Models:
    """The trained parts, their EMA copies and the optimizer; field names are checkpoint keys."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    ema_unet: UNet2DConditionModel
    ema_text: CLIPTextModel
    optimizer: torch.optim.Optimizer

    def parts(self) -> dict[str, checkpoint.Stateful]:
        """Every field by name, as ``checkpoint.save_training`` and its restore expect them."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def params(self) -> list[torch.nn.Parameter]:
        """The trained parameters: the UNet's, then the text encoder's."""
        return list(self.unet.parameters()) + list(self.text_encoder.parameters())

    def ema_params(self) -> list[torch.nn.Parameter]:
        """The EMA copies' parameters, in the order of ``params`` (paired in the EMA update)."""
        return list(self.ema_unet.parameters()) + list(self.ema_text.parameters())


def build_text_encoder(tok, config: dict = TEXT_CONFIG, model_class: type = CLIPTextModel):
    """A randomly initialised CLIP text model of ``config`` for ``tok``'s vocabulary and ids.

    ``model_class``: CLIPTextModel (mini), or CLIPTextModelWithProjection (mini-flow's two).
    """
    return model_class(
        CLIPTextConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **config,
        )
    )


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
def encode_latents(folders: paths.Folders = paths.DEFAULT, vae_config: dict = vae.CONFIG) -> None:
    """Store the posterior mean/std of every crop and its mirror image, and the normalisation.

    ``scaling_factor`` is 1 / std of the training latents; ``shift_factor`` their mean, which
    SD3-style models subtract first (SD 1.x does not). ``vae_config`` builds the VAE to load.
    """
    if folders.latents.exists():
        log.info("latents present: %s", folders.latents)
        return
    crops = data.Crops(folders)
    model = vae.load_trained(folders, vae_config)
    index = np.arange(len(crops.captions))
    means, stds = [], []
    for flip in (False, True):
        mean, std = [], []
        for chunk in np.array_split(index, max(1, len(index) // 128)):
            x = crops.pixels(chunk)
            posterior = model.encode(x.flip(-1) if flip else x).latent_dist
            mean.append(posterior.mean)
            std.append(posterior.std)
        means.append(torch.cat(mean))
        stds.append(torch.cat(std))
        log.info("encoded %d crops (mirrored: %s)", len(index), flip)
    mean, std = torch.stack(means, 1), torch.stack(stds, 1)  # (N, 2, C, 16, 16)
    train = torch.as_tensor(crops.train_index)
    # Variance of a posterior sample = variance of the means + mean posterior variance.
    variance = mean[train].var() + std[train].pow(2).mean()
    scaling_factor = float(1.0 / variance.sqrt())
    shift_factor = float(mean[train].mean())
    log.info(
        "latent mean %.4f std %.4f -> scaling_factor %.5f",
        shift_factor,
        variance.sqrt().item(),
        scaling_factor,
    )
    checkpoint.save(
        folders.latents,
        dict(mean=mean, std=std, scaling_factor=scaling_factor, shift_factor=shift_factor, step=0),
    )


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up over ``settings.warmup`` steps, then cosine decay to lr / 10 at the end."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def load_corpus(folders: paths.Folders, crops: data.Crops, tok) -> Corpus:
    """The stored latents of ``encode_latents`` with every crop's tokenized caption."""
    store = torch.load(folders.latents, weights_only=False)
    return Corpus(
        mean=store["mean"],
        std=store["std"],
        scale=store["scaling_factor"],
        ids=token_ids(tok, crops.captions),
        empty=token_ids(tok, [""])[0],
        train_index=crops.train_index,
    )


def _probe(crops: data.Crops, corpus: Corpus) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Held-out latents (posterior means, not mirrored, scaled) and prompts, per group."""
    probe = {}
    for group, rows in crops.test_by_group(64).items():
        rows = torch.as_tensor(rows)
        probe[group] = (corpus.mean[rows, 0] * corpus.scale, corpus.ids[rows])
    return probe


def restore(
    folders: paths.Folders, tok, settings: Settings
) -> tuple[Models, torch.Generator, int, float]:
    """Fresh models (from the global seed) or the last checkpoint's, and where training stands.

    Returns the models in training mode, the generator every batch is drawn from, the number of
    steps done and the seconds spent on them.
    """
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = build_text_encoder(tok)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    models = Models(
        unet=unet.train(),
        text_encoder=text_encoder.train(),
        ema_unet=copy.deepcopy(unet).requires_grad_(False),
        ema_text=copy.deepcopy(text_encoder).requires_grad_(False),
        optimizer=torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay),
    )
    generator = torch.Generator().manual_seed(settings.seed)
    step, elapsed = checkpoint.restore_training(
        folders.unet_run / "last.pt", models.parts(), generator
    )
    return models, generator, step, elapsed


def draw_batch(
    corpus: Corpus, scheduler: DDPMScheduler, settings: Settings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch, all of it drawn from ``generator``: (noisy latents, timesteps, prompt, noise).

    Shapes (B, 4, 16, 16), (B,), (B, 77), (B, 4, 16, 16) for B = ``settings.batch``.
    """
    batch = settings.batch
    rows = data.draw_rows(corpus.train_index, batch, generator)
    mirror = torch.randint(0, 2, (batch,), generator=generator)
    mean, std = corpus.mean[rows, mirror], corpus.std[rows, mirror]
    latents = (mean + std * torch.randn(mean.shape, generator=generator)) * corpus.scale
    prompt = corpus.ids[rows].clone()
    prompt[torch.rand(batch, generator=generator) < settings.caption_dropout] = corpus.empty
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator
    )
    return scheduler.add_noise(latents, noise, timesteps), timesteps, prompt, noise


def train_step(
    models: Models,
    corpus: Corpus,
    scheduler: DDPMScheduler,
    step: int,
    settings: Settings,
    generator: torch.Generator,
) -> torch.Tensor:
    """Step ``step`` (0-based): one optimizer update and the EMA update; returns the loss."""
    noisy, timesteps, prompt, noise = draw_batch(corpus, scheduler, settings, generator)
    pred = models.unet(noisy, timesteps, models.text_encoder(prompt)[0]).sample
    loss = (pred - noise).pow(2).mean()
    for group in models.optimizer.param_groups:
        group["lr"] = learning_rate(step, settings)
    models.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(models.params(), 1.0)
    models.optimizer.step()
    done = step + 1
    # A short average at first, so the EMA does not remember the random initial weights.
    decay = min(settings.ema_decay, (1 + done) / (10 + done))
    with torch.no_grad():
        torch._foreach_lerp_(models.ema_params(), models.params(), 1 - decay)
    return loss.detach()


def evaluate_held_out(
    models: Models,
    probe: dict[str, tuple[torch.Tensor, torch.Tensor]],
    scheduler: DDPMScheduler,
    step: int,
    timesteps: tuple[int, ...],
) -> None:
    """Log the EMA weights' held-out denoising MSE per group, against predicting zero noise."""
    for group, (z, prompt_ids) in probe.items():
        mse, zero = denoising_mse(
            models.ema_unet.eval(), models.ema_text.eval(), z, prompt_ids, scheduler, timesteps
        )
        log.info(
            "unet step %d held-out %s: ema denoising mse %.4f vs zero-noise %.4f (ratio %.3f)",
            step,
            group,
            mse,
            zero,
            mse / zero,
        )


def save(
    folders: paths.Folders, models: Models, generator: torch.Generator, step: int, elapsed: float
) -> None:
    """Checkpoint everything ``restore`` needs to continue after ``step`` steps."""
    checkpoint.save_training(folders.unet_run / "last.pt", models.parts(), generator, step, elapsed)


def train(folders: paths.Folders = paths.DEFAULT, settings: Settings = Settings()) -> None:
    """Train (or resume) to ``settings.steps``; the state goes to ``folders.unet_run``/last.pt."""
    torch.manual_seed(settings.seed)
    crops = data.Crops(folders)
    tok = tokenizer.build(crops.captions, folders.tokenizer)
    corpus = load_corpus(folders, crops, tok)
    probe = _probe(crops, corpus)
    scheduler = DDPMScheduler(**SCHEDULE)
    models, generator, step, elapsed = restore(folders, tok, settings)
    log.info(
        "unet: %d parameters, text encoder: %d, scaling_factor %.5f",
        sum(p.numel() for p in models.unet.parameters()),
        sum(p.numel() for p in models.text_encoder.parameters()),
        corpus.scale,
    )
    start = time.monotonic() - elapsed
    while step < settings.steps:
        loss = train_step(models, corpus, scheduler, step, settings, generator)
        step += 1
        if step % 20 == 0:
            log.info(
                "unet step %d loss %.4f lr %.2e %.0fs",
                step,
                loss.item(),
                learning_rate(step, settings),
                time.monotonic() - start,
            )
        if step % settings.eval_every == 0 or step == settings.steps:
            evaluate_held_out(models, probe, scheduler, step, settings.eval_timesteps)
        if step % settings.save_every == 0 or step == settings.steps:
            save(folders, models, generator, step, time.monotonic() - start)


def load_trained(
    tok, folders: paths.Folders = paths.DEFAULT
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """The EMA UNet and text encoder from the last checkpoint, in eval mode."""
    state = checkpoint.load(folders.unet_run / "last.pt")
    unet = UNet2DConditionModel(**UNET_CONFIG)
    unet.load_state_dict(state["ema_unet"])
    text_encoder = build_text_encoder(tok)
    text_encoder.load_state_dict(state["ema_text"])
    return unet.eval(), text_encoder.eval()
