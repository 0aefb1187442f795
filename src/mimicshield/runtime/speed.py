"""Speed and memory switches applied to a loaded model: layout, compilation, slicing, tiling.

These change how the networks compute, not what the protection optimises. Precision is not here:
it is the model's dtype (``LatentDiffusion.from_pretrained(dtype=...)``); whatever it is, the
perturbation, the projection and the losses stay in float32 (``pgd`` works on float32 images and
``objectives`` compare in float32), so bf16/fp16 only affect the networks' arithmetic.

``configure`` changes the model in place: callers use it on a model they loaded for the run (the
CLI and the benchmark do), not on one shared with other work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import LatentDiffusion
from ..models.ensemble import Surrogate, members_of


@dataclass(frozen=True)
class SpeedOptions:
    """How the networks compute.

    Attributes:
        channels_last: NHWC weights and activations; faster with oneDNN convolutions on CPUs
            and on tensor-core GPUs. It changes only 4-D weights: the VAE and a UNet; of the
            transformers (SD3, FLUX), only SD3's patch embedding, FLUX's nothing.
        compile: ``torch.compile`` the VAE encoder and the denoiser (minutes of compiling first;
            pays off over many steps or images of one size).
        attention_slicing: diffusers' sliced attention in a UNet (the transformers of SD3 and
            FLUX have no such switch: left as they are). With torch ≥ 2 the default SDPA
            attention already needs memory linear in the tokens, so slicing rarely helps; it is
            here for backends without efficient attention.
        vae_tiling: encode images larger than the VAE's tile size tile by tile (changes the
            latents slightly at the seams). The activations kept for the backward pass are not
            reduced, only the transient peak of one tile's forward.
        encoder_checkpointing: recompute the encoder's block activations during the backward pass
            instead of keeping them, for about one more encoder forward per step. Measured on
            CPU (sd15-random, 128²/256²) it did not lower the peak: the first, full-resolution
            block holds most of the memory and is recomputed whole.
    """

    channels_last: bool = False
    compile: bool = False
    attention_slicing: bool = False
    vae_tiling: bool = False
    encoder_checkpointing: bool = False

    def as_record(self) -> dict[str, bool]:
        """Every switch by its field name, for the run's record."""
        return {
            "channels_last": self.channels_last,
            "compile": self.compile,
            "attention_slicing": self.attention_slicing,
            "vae_tiling": self.vae_tiling,
            "encoder_checkpointing": self.encoder_checkpointing,
        }


def configure(model: Surrogate, options: SpeedOptions) -> Surrogate:
    """Apply ``options`` to ``model`` (each member of an ensemble) in place and return it.

    Switches that are off are untouched.

    Raises:
        RuntimeError: ``compile`` was asked for but this torch has no ``torch.compile``.
    """
    if options.compile and not hasattr(torch, "compile"):
        raise RuntimeError("compiling needs torch ≥ 2.0 with torch.compile")
    for member in members_of(model):
        _configure_one(member.model, options)
    return model


def _configure_one(model: LatentDiffusion, options: SpeedOptions) -> None:
    if options.channels_last:
        for network in (model.vae, model.denoiser):
            network.to(memory_format=torch.channels_last)
    if options.attention_slicing and hasattr(model.denoiser, "set_attention_slice"):
        # UNets slice attention; the transformers of SD3 and FLUX have no such switch.
        model.denoiser.set_attention_slice("auto")
    if options.vae_tiling:
        model.vae.enable_tiling()
    if options.encoder_checkpointing:
        # diffusers checkpoints with use_reentrant=False, which works with frozen weights: only the
        # input needs to require grad, and the perturbed images always do.
        model.vae.enable_gradient_checkpointing()
    if options.compile:
        # Compile the parts every step runs; dynamic=False: one image size per batch.
        model.vae.encoder.compile(dynamic=False)
        model.denoiser.compile(dynamic=False)
