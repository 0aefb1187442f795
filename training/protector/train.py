"""Train a ``PerturbationNetwork`` against one surrogate model, resumably, with accelerate.

Each step: draw a batch of clean images x, let the network give δ = ε·tanh(h(x)), and take one
optimiser step that *increases* a protection objective at x + δ (clipped to [0, 1]) — the
objective PGD ascends per image, here ascended for the network's weights over the whole data:

- ``sds-``: SDS−, the recommended method's objective: minus the score-distillation surrogate,
  whose gradient through the encoder is J_Eᵀ(ε̂ − ε) (one UNet forward under no_grad, no UNet
  backward); with the network in the loop the chain continues into its weights;
- ``encoder``: the encoder attack without a target, ‖E(x + δ) − E(x)‖² (posterior sample of the
  protected image, posterior mean of the clean one): no UNet at all.

Both are ``objectives.weighted_objective`` with the library's own primitives and one fresh
``StepNoise`` per step, so training optimises exactly what the PGD methods measure. Every random
draw (batches, flips, timesteps, noise) comes from one generator saved with the weights and the
optimiser, so a resumed run equals an uninterrupted one bit for bit.

Under ``accelerate launch`` every process draws the same global batch and noise from the same
generator and works on its share (rows ``index::count``); accelerate averages the gradients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from mimicshield import LatentDiffusion
from mimicshield.models import PerturbationNetwork
from mimicshield.objectives import Conditioning, ObjectiveWeights, StepNoise, weighted_objective
from training.mini import checkpoint

from .data import Images, draw_batch

log = logging.getLogger(__name__)

#: What each objective maximises, as weights of the library's primitives.
OBJECTIVES = {
    "sds-": ObjectiveWeights(score_distillation=-1.0),
    "encoder": ObjectiveWeights(latent_distance=1.0),  # away from the clean image's latent
}


@dataclass(frozen=True)
class Settings:
    """One training run; the defaults are the shipped ``protector-mini``'s.

    Attributes:
        model: the surrogate: ``mini``, a diffusers folder or a hub id.
        objective: a key of ``OBJECTIVES``.
        eps_255: L∞ budget in 0–255 units.
        block_channels: the network's channels per level.
        centred: the network's ``centred`` switch (off only to reproduce the collapse it
            prevents).
        steps: optimiser steps.
        batch: images per step (all processes together).
        lr: peak learning rate (AdamW), after ``warmup`` steps, cosine to 0 at ``steps``.
        warmup: steps of linear warm-up.
        prompt: the denoiser's text condition (the methods' default).
        dtype: the surrogate's precision (fp32, bf16, fp16); the network trains in fp32.
        mixed_precision: accelerate's ``no``, ``bf16`` or ``fp16`` (autocast of the forward).
        log_every: steps between training logs.
        eval_every: steps between validation logs.
        save_every: steps between checkpoints.
        seed: initial weights and every random draw.
    """

    model: str = "mini"
    objective: str = "sds-"
    eps_255: float = 16.0
    block_channels: tuple[int, ...] = (16, 32, 64, 128)
    centred: bool = True
    steps: int = 3000
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 100
    prompt: str = "a photo"
    dtype: str = "fp32"
    mixed_precision: str = "no"
    log_every: int = 20
    eval_every: int = 250
    save_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'"
            )


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up over ``settings.warmup`` steps, then cosine decay to 0 at the last step."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def build(settings: Settings, model: LatentDiffusion) -> PerturbationNetwork:
    """A freshly initialised network (seeded, the caller's RNG untouched) that names ``model``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return PerturbationNetwork(
            block_channels=tuple(settings.block_channels),
            eps_255=settings.eps_255,
            surrogate=model.name,
            surrogate_digest=model.config_digest(),
            objective=settings.objective,
            centred=settings.centred,
        )


def objective(
    model: LatentDiffusion,
    clean: torch.Tensor,
    protected: torch.Tensor,
    settings: Settings,
    step: StepNoise,
) -> torch.Tensor:
    """The objective to *maximise*, per image, at ``protected`` = clean + δ (B, 3, H, W)."""
    weights = OBJECTIVES[settings.objective]
    target = None
    if weights.latent_distance:
        with torch.no_grad():
            target = model.encode(clean)
    conditioning = Conditioning(model.embed([settings.prompt] * len(clean)), target)
    return weighted_objective(model, protected, weights, conditioning, step) / len(clean)


@torch.no_grad()
def validate(
    model: LatentDiffusion, network: PerturbationNetwork, images: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Cheap validation figures of the network on uint8 (N, 3, H, W) ``images``.

    Returns:
        ``latent_shift``: ‖E(x + δ) − E(x)‖₂ over ‖E(x + noise) − E(x)‖₂ (posterior means, mean
        over images; noise = random signs of the same ε): higher = stronger;
        ``saturated``: the share of |δ| above 0.99 ε (the tanh at its ends, little gradient);
        ``image_dependence``: the standard deviation of δ across images over ε, mean over pixels
        (0 for one image-independent pattern).
    """
    eps = network.trained_eps
    clean = images.float().to(model.device) / 255
    delta = network(clean.to(network.device)).to(clean)
    protected = (clean + delta).clamp(0, 1)
    signs = torch.randint(0, 2, clean.shape, generator=torch.Generator().manual_seed(seed))
    noisy = (clean + (signs.to(clean) * 2 - 1) * eps).clamp(0, 1)
    reference = model.encode(clean)

    def shift(images: torch.Tensor) -> torch.Tensor:
        return (model.encode(images) - reference).float().flatten(1).norm(dim=1)

    return {
        "latent_shift": float((shift(protected) / shift(noisy)).mean()),
        "saturated": float((delta.abs() > 0.99 * eps).float().mean()),
        "image_dependence": float(delta.std(dim=0).mean() / eps) if len(delta) > 1 else 0.0,
    }


def train(settings: Settings, images: Images, run: Path) -> PerturbationNetwork:
    """Train (or resume) to ``settings.steps``; state in ``run``/last.pt, settings beside it.

    Returns:
        The trained network (unwrapped, float32, eval mode, on the accelerator's device).

    Raises:
        ValueError: ``run`` holds a run with other settings (start a new folder instead).
    """
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=settings.mixed_precision
    )
    _claim_run(run, settings, images, accelerator.is_main_process)
    model = LatentDiffusion.from_pretrained(
        settings.model, device=accelerator.device, dtype=settings.dtype
    )
    network = build(settings, model).to(accelerator.device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    parts = {"network": network, "optimizer": optimizer}
    step, elapsed = checkpoint.restore_training(run / "last.pt", parts, generator)
    trained, optimizer = accelerator.prepare(network, optimizer)
    share = slice(accelerator.process_index, None, accelerator.num_processes)
    validation = images.validation[:64]
    log.info(
        "protector: %d parameters, %d training images (%s), objective %s, against %s",
        sum(p.numel() for p in network.parameters()),
        len(images.train),
        images.source,
        settings.objective,
        model.name,
    )

    start = time.monotonic() - elapsed
    trained.train()
    with model.frozen():
        while step < settings.steps:
            # 1. The global batch and its noise, drawn alike on every process; this one's share.
            batch = draw_batch(images.train, settings.batch, generator)
            noise = StepNoise.draw(model, batch, generator)
            clean = batch[share].to(accelerator.device)
            mine = StepNoise(
                noise.timesteps[share], noise.noise[share], noise.posterior_noise[share]
            )

            # 2. One step up the objective, through the network's weights.
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings)
            with accelerator.autocast():
                protected = (clean + trained(clean)).clamp(0, 1)
                value = objective(model, clean, protected, settings, mine)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(-value)
            accelerator.clip_grad_norm_(trained.parameters(), 1.0)
            optimizer.step()
            step += 1

            # 3. Logs and checkpoints (the main process writes).
            if step % settings.log_every == 0 and accelerator.is_main_process:
                log.info(
                    "protector step %d objective %.4g lr %.2e %.0fs (process CPU %.0fs)",
                    step,
                    value.item(),
                    learning_rate(step, settings),
                    time.monotonic() - start,
                    time.process_time(),
                )
            evaluate = step % settings.eval_every == 0 or step == settings.steps
            if evaluate and len(validation) and accelerator.is_main_process:
                trained.eval()
                figures = validate(model, accelerator.unwrap_model(trained), validation)
                log.info(
                    "protector step %d validation: latent shift ×%.3f noise, saturated %.3f, "
                    "image dependence %.3f",
                    step,
                    figures["latent_shift"],
                    figures["saturated"],
                    figures["image_dependence"],
                )
                trained.train()
            if step % settings.save_every == 0 or step == settings.steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    checkpoint.save_training(
                        run / "last.pt", parts, generator, step, time.monotonic() - start
                    )
    return accelerator.unwrap_model(trained).eval()


def _claim_run(run: Path, settings: Settings, images: Images, is_main: bool) -> None:
    """Write ``run``/settings.json, or check that a run to resume had the same settings."""
    record = {**dataclasses.asdict(settings), "data": images.source}
    record["block_channels"] = list(settings.block_channels)
    path = run / "settings.json"
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier != record:
            changed = sorted(key for key in record if earlier.get(key) != record[key])
            raise ValueError(
                f"{run} holds a run with other settings ({', '.join(changed)} differ); "
                "resume it with the same settings or train into a new --run folder"
            )
        return
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")


def export(network: PerturbationNetwork, output: Path) -> None:
    """Write the network as fp16 safetensors with its config (a model card there is kept)."""
    network.to(torch.float16).save_pretrained(output, safe_serialization=True)
    network.to(torch.float32)
    log.info("exported %s", output)
