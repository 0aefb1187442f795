"""CLIP image similarity: cosine similarity of CLIP image embeddings (Radford et al. 2021).

Preprocessing is done in torch, batched on the model's device, and follows CLIP's image
processor: bicubic antialiased resize of the shorter side to the model's image size, centre crop
to a square, normalisation with CLIP's mean and standard deviation. (The processor does the
resize in 8-bit PIL; ours stays in float, so embeddings differ from it by resampling round-off
only.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tensors import check_images, check_pair
from .errors import MetricUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
#: The normalisation every OpenAI and OpenCLIP-converted checkpoint on the hub uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipImageEncoder:
    """A CLIP vision tower with projection, seen as images → embeddings.

    Attributes:
        model: a ``transformers.CLIPVisionModelWithProjection`` (frozen, eval mode).
        image_size: side of the square input the model was trained on (224 for ViT-B/32).
        name: hub id or folder it came from (for records).
    """

    model: torch.nn.Module
    image_size: int
    name: str = "unnamed"

    @property
    def device(self) -> torch.device:
        """Where the model's weights are, and so where ``preprocess`` puts the images."""
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 3, S, S) normalised CLIP input, S = ``image_size``."""
        check_images(images)
        pixels = images.to(self.device, torch.float32)
        height, width = pixels.shape[-2:]
        side = self.image_size
        # The shorter side becomes `side`, the longer one is truncated, as the processor does.
        if height <= width:
            size = (side, int(side * width / height))
        else:
            size = (int(side * height / width), side)
        resized = F.interpolate(
            pixels, size=size, mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (size[0] - side) // 2, (size[1] - side) // 2
        # Bicubic overshoots at edges; the processor's 8-bit output cannot leave [0, 1] either.
        square = resized[..., top : top + side, left : left + side].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=square.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=square.device).view(1, 3, 1, 1)
        return (square - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, D) projected image embeddings (not normalised), float32."""
        inputs = self.preprocess(images).to(self.model.dtype)
        return self.model(pixel_values=inputs).image_embeds.float()


def clip_similarity(
    images: torch.Tensor, references: torch.Tensor, encoder: ClipImageEncoder
) -> torch.Tensor:
    """Cosine similarity of the CLIP embeddings of each image and its reference.

    Args:
        images: (B, 3, H, W) in [0, 1].
        references: (B, 3, H, W) in [0, 1], the same shape as ``images``.
        encoder: from ``load_clip`` (or any callable images → (B, D) embeddings).

    Returns:
        (B,) float32 in [-1, 1]; 1 for identical images.
    """
    check_pair(images, references)
    embeddings = encoder(torch.cat([images, references]))
    first, second = embeddings.chunk(2)
    return F.cosine_similarity(first, second, dim=-1)


def load_clip(
    name_or_path: str | os.PathLike = DEFAULT_CLIP_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClipImageEncoder:
    """Load a CLIP vision tower with projection from a hub id or a save_pretrained folder.

    Full CLIP checkpoints (like the default) work: transformers takes their vision half.

    Raises:
        MetricUnavailableError: the weights are neither cached nor downloadable.
    """
    # Imported here: transformers' model classes are only needed when a metric is loaded.
    from transformers import CLIPVisionModelWithProjection

    name = str(name_or_path)
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(name, torch_dtype=dtype)
    except (OSError, ValueError) as error:
        logger.debug("loading CLIP %s failed", name, exc_info=error)
        raise MetricUnavailableError(_missing_clip_sentence(name)) from None
    model.eval().requires_grad_(False).to(device)
    return ClipImageEncoder(model=model, image_size=model.config.image_size, name=name)


def _missing_clip_sentence(name: str) -> str:
    if Path(name).exists():
        return (
            f"'{name}' is not a CLIP model folder (it needs a CLIP config.json and weights): "
            "point it at a folder written by save_pretrained or at a hub id."
        )
    return (
        f"The CLIP model '{name}' is not in the local Hugging Face cache and cannot be downloaded "
        f"now (offline or HF_HUB_OFFLINE=1): download it once with `hf download {name}` on a "
        "machine with network, or pass a local folder saved with save_pretrained."
    )
