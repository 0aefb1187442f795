"""What the mimicry scenarios share: pipelines over the loaded parts, outputs back to the caller."""

from __future__ import annotations

from typing import TypeVar

import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from ..models import LatentDiffusion

PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)


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
