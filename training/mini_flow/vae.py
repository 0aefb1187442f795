"""The flow-matching miniature's AutoencoderKL: 64x64 RGB <-> 16x16x16 latents (factor 4).

SD3's VAE has 16 latent channels (SD 1.x: 4) and no quant convolutions; this one has the
miniature's size otherwise and is trained by the miniature's VAE stage (``training.mini.vae``):
same loss, schedule, crops and checkpointing, only the configuration and the step count differ.
SD3's latent normalisation ``(z - shift_factor) * scaling_factor`` is measured afterwards on the
training latents (``latents.encode``).
"""

from dataclasses import dataclass

from training.mini import vae as mini_vae

CONFIG = dict(
    mini_vae.CONFIG,
    latent_channels=16,
    use_quant_conv=False,  # as SD3's VAE
    use_post_quant_conv=False,
)


@dataclass(frozen=True)
class Settings(mini_vae.Settings):
    """The miniature's VAE settings with this recipe's step count (see the model card)."""

    steps: int = 1500
