"""What the mimicry scenarios share: input checks, padding, and pipelines over the loaded parts."""

from __future__ import annotations

from typing import TypeVar

import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from ..models import LatentDiffusion

PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)


def check_strength(strength: float) -> None:
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")


def check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_guidance(guidance_scale: float) -> None:
    if not guidance_scale >= 0:  # also refuses NaN
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")


def build_pipeline(
    pipeline_class: type[PipelineT], model: LatentDiffusion, **overrides: object
) -> PipelineT:
    """A diffusers pipeline over ``model``'s already loaded parts, with a fresh DDIM scheduler.

    Nothing is loaded or copied: the pipeline references the same networks. The scheduler is a
    new object (pipelines set its timesteps) built from the model's config, so the shared one is
    never mutated. No safety checker (research use on the user's own images) and no progress bar
    (the library does not print). ``overrides`` replaces parts, e.g. an extended tokenizer.
    """
    parts = {
        "vae": model.vae,
        "text_encoder": model.text_encoder,
        "tokenizer": model.tokenizer,
        "unet": model.unet,
        "scheduler": DDIMScheduler.from_config(model.scheduler.config),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
        **overrides,
    }
    pipeline = pipeline_class(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def to_caller(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pipeline output (B, 3, H', W') → cropped to ``like``'s H, W, on its device and dtype."""
    height, width = like.shape[-2:]
    return output[..., :height, :width].clamp(0, 1).to(like.device, like.dtype)
