"""Train the SD3Transformer2DModel (MMDiT) and its two CLIP text encoders on the VAE latents.

Stable Diffusion 3's objective at miniature scale (rectified flow): for a normalised latent z,
noise e and sigma in (0, 1], the input is z_t = (1 - sigma) z + sigma e and the target velocity
is e - z. Sigma comes from ``FlowMatchEulerDiscreteScheduler``'s 1000 training sigmas
(t / 1000 for t = 1..1000, shifted by ``SCHEDULER["shift"]``), picked by a logit-normal draw as
in SD3 (``u = sigmoid(N(0, 1))``, index ``floor(u * 1000)``); the transformer is called with that
sigma's timestep (sigma * 1000), as the pipeline does. The loss is the unweighted MSE.

The prompt goes through ``encode_prompt``, which builds exactly the tensors
``StableDiffusion3Pipeline.encode_prompt`` builds without a T5 encoder (tested against it), so
the exported folder works with the diffusers pipelines unchanged. Both text encoders are trained
jointly (there are no pretrained ones), 10 % of prompts are replaced by the empty prompt for
classifier-free guidance, and an EMA of the weights is what gets exported, as in the miniature.
"""

import copy
import logging
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection

from training.mini import checkpoint, data, tokenizer
from training.mini import unet as mini_unet

from . import paths

log = logging.getLogger(__name__)

# Two CLIP text encoders of the miniature's width; SD3's are CLIP-L (768) and OpenCLIP bigG (1280).
TEXT_CONFIG = dict(
    mini_unet.TEXT_CONFIG,
    # The pipeline takes hidden_states[-2], so 3 layers feed 2 of them to the transformer.
    num_hidden_layers=3,
)
TEXT_WIDTH = TEXT_CONFIG["hidden_size"]

# The pipeline concatenates both encoders' hidden states on features, then pads them with zeros
# to joint_attention_dim (a smaller one would cut the second encoder off), and concatenates both
# pooled embeddings; so both dimensions are twice the encoders' widths.
CONFIG = dict(
    sample_size=16,  # latent side: 64 px / VAE factor 4; the pipeline's default size is 64 px
    patch_size=2,  # 8 x 8 = 64 image tokens
    in_channels=16,
    out_channels=16,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,  # width 128
    joint_attention_dim=2 * TEXT_WIDTH,
    caption_projection_dim=128,  # = width, as in SD3
    pooled_projection_dim=2 * TEXT_CONFIG["projection_dim"],
    pos_embed_max_size=8,  # patches per side
)

# shift 1.0: SD3's shift 3.0 moves sigmas towards noise because at 1024 px (128x128 latents) much
# more noise is needed to destroy an image's content; at 8x8 tokens of a 16x16 latent, unshifted
# sigmas already reach pure noise at sigma = 1 and keep the training and sampling grid uniform.
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0)

# The pipeline's default ``max_sequence_length``: without T5 it appends this many zero tokens.
MAX_SEQUENCE_LENGTH = 256

EVAL_SIGMAS = tuple(round(0.05 + 0.1 * i, 2) for i in range(10))


@dataclass(frozen=True)
class Settings:
    """Training hyperparameters; the defaults are the shipped model's (see its model card)."""

    steps: int = 1200
    batch: int = 32  # latents per step
    lr: float = 5e-4  # peak, reached after ``warmup`` steps, then cosine to a tenth of it
    warmup: int = 100  # steps
    weight_decay: float = 0.01  # AdamW's
    caption_dropout: float = 0.1  # fraction of prompts replaced by "" (for guidance)
    logit_mean: float = 0.0  # sigma = sigmoid(N(logit_mean, logit_std)), SD3's rf/lognorm(0, 1)
    logit_std: float = 1.0
    ema_decay: float = 0.999  # upper bound; after n steps the decay is (1 + n) / (10 + n)
    eval_every: int = 300  # steps between held-out loss logs
    eval_sigmas: tuple[float, ...] = EVAL_SIGMAS  # the held-out loss is averaged over these
    save_every: int = 50  # steps between checkpoints
    seed: int = 0  # initial weights and every random draw of training


@dataclass(frozen=True)
class Corpus:
    """What training steps draw from: every crop's stored posterior, and its prompt."""

    mean: torch.Tensor  # (N, 2, 16, 16, 16) posterior means; [:, 1] is of the mirror image
    std: torch.Tensor  # (N, 2, 16, 16, 16) posterior standard deviations
    shift: float  # SD3's shift_factor: the mean of the training latents
    scale: float  # SD3's scaling_factor: 1 / their std
    ids: torch.Tensor  # (N, 77) prompt token ids
    empty: torch.Tensor  # (77,) token ids of the empty prompt
    train_index: np.ndarray  # rows that may be trained on

    def normalised(self, rows: torch.Tensor, mirror: torch.Tensor | int = 0) -> torch.Tensor:
        """Posterior means of ``rows``, normalised as the pipeline does: (z - shift) * scale."""
        return (self.mean[rows, mirror] - self.shift) * self.scale


@dataclass
class Models:
    """The trained parts, their EMA copies and the optimizer; field names are checkpoint keys."""

    transformer: SD3Transformer2DModel
    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    ema_transformer: SD3Transformer2DModel
    ema_text: CLIPTextModelWithProjection
    ema_text_2: CLIPTextModelWithProjection
    optimizer: torch.optim.Optimizer

    def parts(self) -> dict[str, checkpoint.Stateful]:
        """Every field by name, as ``checkpoint.save_training`` and its restore expect them."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def params(self) -> list[torch.nn.Parameter]:
        """The trained parameters: the transformer's, then both text encoders'."""
        return [
            p
            for part in (self.transformer, self.text_encoder, self.text_encoder_2)
            for p in part.parameters()
        ]

    def ema_params(self) -> list[torch.nn.Parameter]:
        """The EMA copies' parameters, in the order of ``params`` (paired in the EMA update)."""
        return [
            p
            for part in (self.ema_transformer, self.ema_text, self.ema_text_2)
            for p in part.parameters()
        ]


def build_text_encoder(tok) -> CLIPTextModelWithProjection:
    """A randomly initialised ``TEXT_CONFIG`` CLIP text model with projection for ``tok``."""
    return mini_unet.build_text_encoder(tok, TEXT_CONFIG, CLIPTextModelWithProjection)


def build(tok) -> tuple[SD3Transformer2DModel, CLIPTextModelWithProjection, ...]:
    """Fresh transformer, text encoder and text encoder 2, drawn in that order from torch's seed."""
    return SD3Transformer2DModel(**CONFIG), build_text_encoder(tok), build_text_encoder(tok)


def encode_prompt(
    text_encoder: CLIPTextModelWithProjection,
    text_encoder_2: CLIPTextModelWithProjection,
    ids: torch.Tensor,
    joint_attention_dim: int = CONFIG["joint_attention_dim"],
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt``'s conditioning without T5, from token ids.

    ``ids`` (B, 77) are the prompts tokenized by ``mini_unet.token_ids`` (both tokenizers are the
    same BPE). Returns ``prompt_embeds`` (B, 77 + max_sequence_length, joint_attention_dim): the
    penultimate hidden states of both encoders side by side, zero-padded on features, then
    ``max_sequence_length`` zero tokens where T5's would be; and ``pooled_prompt_embeds``
    (B, 2 * projection_dim): both projected pooled outputs side by side.
    """
    first = text_encoder(ids, output_hidden_states=True)
    second = text_encoder_2(ids, output_hidden_states=True)
    clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, joint_attention_dim - clip.shape[-1]))
    t5 = clip.new_zeros(len(ids), max_sequence_length, joint_attention_dim)
    pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1)
    return torch.cat([clip, t5], dim=-2), pooled


def velocity(
    transformer: SD3Transformer2DModel,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    prompt: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The transformer's velocity prediction for ``noisy`` (B, 16, 16, 16) at ``sigma`` (B,).

    ``prompt`` is ``encode_prompt``'s pair; the timestep is sigma * 1000, as the pipeline passes.
    """
    embeds, pooled = prompt
    return transformer(
        hidden_states=noisy,
        timestep=sigma * SCHEDULER["num_train_timesteps"],
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
    ).sample


@torch.no_grad()
def flow_mse(
    transformer: SD3Transformer2DModel,
    text_encoders: tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection],
    latents: torch.Tensor,
    ids: torch.Tensor,
    sigmas: tuple[float, ...] = EVAL_SIGMAS,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean velocity MSE over ``sigmas``, and that of predicting zero velocity.

    ``latents`` (B, 16, 16, 16) are normalised. Noise comes from a fixed generator, so figures
    compare across checkpoints and models.
    """
    generator = torch.Generator().manual_seed(seed)
    prompt = encode_prompt(*text_encoders, ids)
    model_err, zero_err = [], []
    for value in sigmas:
        noise = torch.randn(latents.shape, generator=generator)
        sigma = torch.full((len(latents),), value)
        noisy = (1 - value) * latents + value * noise
        target = noise - latents
        for part in torch.split(torch.arange(len(latents)), 64):
            conditioning = (prompt[0][part], prompt[1][part])
            pred = velocity(transformer, noisy[part], sigma[part], conditioning)
            model_err.append((pred - target[part]).pow(2).mean(dim=(1, 2, 3)))
        zero_err.append(target.pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(model_err).mean().item(), torch.cat(zero_err).mean().item()


def load_corpus(folders: paths.Folders, crops: data.Crops, tok) -> Corpus:
    """The stored latents of the ``latents`` stage with every crop's tokenized caption."""
    store = torch.load(folders.latents, weights_only=False)
    return Corpus(
        mean=store["mean"],
        std=store["std"],
        shift=store["shift_factor"],
        scale=store["scaling_factor"],
        ids=mini_unet.token_ids(tok, crops.captions),
        empty=mini_unet.token_ids(tok, [""])[0],
        train_index=crops.train_index,
    )


def restore(
    folders: paths.Folders, tok, settings: Settings
) -> tuple[Models, torch.Generator, int, float]:
    """Fresh models (from the global seed) or the last checkpoint's, and where training stands.

    Returns the models in training mode, the generator every batch is drawn from, the number of
    steps done and the seconds spent on them.
    """
    transformer, text_encoder, text_encoder_2 = build(tok)
    params = [p for part in (transformer, text_encoder, text_encoder_2) for p in part.parameters()]
    models = Models(
        transformer=transformer.train(),
        text_encoder=text_encoder.train(),
        text_encoder_2=text_encoder_2.train(),
        ema_transformer=copy.deepcopy(transformer).requires_grad_(False),
        ema_text=copy.deepcopy(text_encoder).requires_grad_(False),
        ema_text_2=copy.deepcopy(text_encoder_2).requires_grad_(False),
        optimizer=torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay),
    )
    generator = torch.Generator().manual_seed(settings.seed)
    step, elapsed = checkpoint.restore_training(
        folders.transformer_run / "last.pt", models.parts(), generator
    )
    return models, generator, step, elapsed


def training_sigmas() -> torch.Tensor:
    """The scheduler's 1000 training sigmas (descending from 1), shifted by ``SCHEDULER``."""
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER).sigmas


def draw_batch(
    corpus: Corpus, sigmas: torch.Tensor, settings: Settings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch, all of it drawn from ``generator``: (noisy latents, sigmas, prompt, target).

    Shapes (B, 16, 16, 16), (B,), (B, 77), (B, 16, 16, 16) for B = ``settings.batch``; the
    target is the velocity noise - latents.
    """
    batch = settings.batch
    rows = data.draw_rows(corpus.train_index, batch, generator)
    mirror = torch.randint(0, 2, (batch,), generator=generator)
    mean, std = corpus.mean[rows, mirror], corpus.std[rows, mirror]
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    latents = (sample - corpus.shift) * corpus.scale
    prompt = corpus.ids[rows].clone()
    prompt[torch.rand(batch, generator=generator) < settings.caption_dropout] = corpus.empty
    noise = torch.randn(latents.shape, generator=generator)
    logits = settings.logit_mean + settings.logit_std * torch.randn(batch, generator=generator)
    index = (torch.sigmoid(logits) * len(sigmas)).long().clamp(max=len(sigmas) - 1)
    sigma = sigmas[index]
    s = sigma[:, None, None, None]
    return (1 - s) * latents + s * noise, sigma, prompt, noise - latents


def train_step(
    models: Models,
    corpus: Corpus,
    sigmas: torch.Tensor,
    step: int,
    settings: Settings,
    generator: torch.Generator,
) -> torch.Tensor:
    """Step ``step`` (0-based): one optimizer update and the EMA update; returns the loss."""
    noisy, sigma, prompt, target = draw_batch(corpus, sigmas, settings, generator)
    conditioning = encode_prompt(models.text_encoder, models.text_encoder_2, prompt)
    loss = (velocity(models.transformer, noisy, sigma, conditioning) - target).pow(2).mean()
    for group in models.optimizer.param_groups:
        group["lr"] = mini_unet.learning_rate(step, settings)
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
    models: Models, probe: dict[str, tuple[torch.Tensor, torch.Tensor]], step: int, settings
) -> None:
    """Log the EMA weights' held-out velocity MSE per group, against predicting zero."""
    denoiser = models.ema_transformer.eval()
    text = (models.ema_text.eval(), models.ema_text_2.eval())
    for group, (z, prompt_ids) in probe.items():
        mse, zero = flow_mse(denoiser, text, z, prompt_ids, settings.eval_sigmas)
        log.info(
            "transformer step %d held-out %s: ema velocity mse %.4f vs zero %.4f (ratio %.3f)",
            step,
            group,
            mse,
            zero,
            mse / zero,
        )


def train(folders: paths.Folders = paths.DEFAULT, settings: Settings = Settings()) -> None:
    """Train (or resume) to ``settings.steps``; the state goes to ``folders.transformer_run``."""
    torch.manual_seed(settings.seed)
    crops = data.Crops(folders)
    tok = tokenizer.build(crops.captions, folders.tokenizer)
    corpus = load_corpus(folders, crops, tok)
    probe = {
        group: (corpus.normalised(torch.as_tensor(rows)), corpus.ids[rows])
        for group, rows in crops.test_by_group(64).items()
    }
    sigmas = training_sigmas()
    models, generator, step, elapsed = restore(folders, tok, settings)
    log.info(
        "transformer: %d parameters, text encoders: %d + %d, shift %.5f, scale %.5f",
        sum(p.numel() for p in models.transformer.parameters()),
        sum(p.numel() for p in models.text_encoder.parameters()),
        sum(p.numel() for p in models.text_encoder_2.parameters()),
        corpus.shift,
        corpus.scale,
    )
    last = folders.transformer_run / "last.pt"
    start = time.monotonic() - elapsed
    while step < settings.steps:
        loss = train_step(models, corpus, sigmas, step, settings, generator)
        step += 1
        if step % 20 == 0:
            log.info(
                "transformer step %d loss %.4f lr %.2e %.0fs",
                step,
                loss.item(),
                mini_unet.learning_rate(step, settings),
                time.monotonic() - start,
            )
        if step % settings.eval_every == 0 or step == settings.steps:
            evaluate_held_out(models, probe, step, settings)
        if step % settings.save_every == 0 or step == settings.steps:
            checkpoint.save_training(
                last, models.parts(), generator, step, time.monotonic() - start
            )


def load_trained(
    tok, folders: paths.Folders = paths.DEFAULT
) -> tuple[SD3Transformer2DModel, CLIPTextModelWithProjection, CLIPTextModelWithProjection]:
    """The EMA transformer and text encoders from the last checkpoint, in eval mode."""
    state = checkpoint.load(folders.transformer_run / "last.pt")
    transformer, text_encoder, text_encoder_2 = build(tok)
    transformer.load_state_dict(state["ema_transformer"])
    text_encoder.load_state_dict(state["ema_text"])
    text_encoder_2.load_state_dict(state["ema_text_2"])
    return transformer.eval(), text_encoder.eval(), text_encoder_2.eval()
