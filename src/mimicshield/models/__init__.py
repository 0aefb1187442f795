"""The model adapter: the only package that imports diffusers/transformers model classes.

- ``latent_diffusion``: ``LatentDiffusion``, loading and the operations protection, mimicry and
  metrics need (encode and the encoder's ``Posterior``, decode, embed, noise, predict, target),
  and the schedule algebra (ᾱ_t, x̂₀, the timestep of a strength).
- ``random_weights``: configurations of random-weight models (``tiny`` for tests, ``sd15-random``
  for benchmarks) and the offline test tokenizer.
- ``devices``: device and precision choice, and the versions that go into records.
- ``protector``: the amortised protector's network (``PerturbationNetwork``) and its loading.
"""

from __future__ import annotations

from .devices import (
    DTYPES,
    ModelUnavailableError,
    cpu_has_bf16_instructions,
    default_dtypes,
    devices,
    dtype_name,
    resolve_device,
    resolve_dtype,
    versions,
)
from .latent_diffusion import (
    DEFAULT_MODEL,
    INPAINTING_UNET_CHANNELS,
    MINI_MODEL_DIR,
    RANDOM_MODELS,
    LatentDiffusion,
    Posterior,
    model_notes,
    one_step_timestep,
)
from .protector import DEFAULT_PROTECTOR, PerturbationNetwork, load_protector

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROTECTOR",
    "DTYPES",
    "INPAINTING_UNET_CHANNELS",
    "MINI_MODEL_DIR",
    "RANDOM_MODELS",
    "LatentDiffusion",
    "ModelUnavailableError",
    "PerturbationNetwork",
    "Posterior",
    "cpu_has_bf16_instructions",
    "default_dtypes",
    "devices",
    "dtype_name",
    "load_protector",
    "model_notes",
    "one_step_timestep",
    "resolve_device",
    "resolve_dtype",
    "versions",
]
