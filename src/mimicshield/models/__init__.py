"""The model adapter: the only package that imports diffusers/transformers model classes.

- ``base``: ``LatentDiffusion``, the interface every family implements (encode and the encoder's
  ``Posterior``, decode, embed → ``PromptEmbeddings``, noise, predict, target, ε̂, x̂₀, pipelines).
- ``sd``, ``sdxl``, ``sd3``, ``flux``: the families (``flow``: the flow-matching algebra SD3 and
  FLUX share, with the score-distillation derivation).
- ``loading``: which family a folder, hub id or single file is, and loading it; the miniatures
  and the random architectures (``RANDOM_MODELS``).
- ``ensemble``: several models protected against at once.
- ``random_weights``: configurations of random-weight models and the offline test tokenizers.
- ``devices``: device and precision choice, and the versions that go into records.
- ``protector``: the amortised protector's network (``PerturbationNetwork``) and its loading.
"""

from __future__ import annotations

from .base import LatentDiffusion, Posterior, PromptEmbeddings, one_step_timestep
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
from .ensemble import Ensemble
from .flux import Flux
from .loading import (
    DEFAULT_MODEL,
    FAMILIES,
    MINI_FLOW_MODEL_DIR,
    MINI_MODEL_DIR,
    MINIATURES,
    RANDOM_MODELS,
    load_model,
    model_notes,
)
from .protector import DEFAULT_PROTECTOR, PerturbationNetwork, load_protector
from .sd import INPAINTING_UNET_CHANNELS, StableDiffusion
from .sd3 import StableDiffusion3
from .sdxl import StableDiffusionXL

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROTECTOR",
    "DTYPES",
    "Ensemble",
    "FAMILIES",
    "INPAINTING_UNET_CHANNELS",
    "MINIATURES",
    "MINI_FLOW_MODEL_DIR",
    "MINI_MODEL_DIR",
    "RANDOM_MODELS",
    "Flux",
    "LatentDiffusion",
    "ModelUnavailableError",
    "PerturbationNetwork",
    "Posterior",
    "PromptEmbeddings",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "cpu_has_bf16_instructions",
    "default_dtypes",
    "devices",
    "dtype_name",
    "load_model",
    "load_protector",
    "model_notes",
    "one_step_timestep",
    "resolve_device",
    "resolve_dtype",
    "versions",
]
