"""Mimicry scenarios (DESIGN §4): what an imitator does with the images we protect.

Each scenario is a function of a loaded ``LatentDiffusion`` and (B, 3, H, W) images in [0, 1]
that returns images in [0, 1]. The diffusers pipelines behind them are built from the model's
already loaded parts (nothing is loaded twice) and leave the model as they found it. Randomness
comes only from the ``generator`` argument.

Every family (SD 1.x/2.x, SDXL, SD3, FLUX) runs through its own diffusers pipelines:

- ``sdedit`` (multi-step img2img) and ``one_step_reconstruction`` (x̂₀ in one denoiser call);
- ``inpaint`` with an SD inpainting model or, for a base model, latent blending; masks from
  ``MASKS`` (``center``, ``border``, ``strokes``) or a file;
- ``textual_inversion`` (SD 1.x/2.x and SDXL, where diffusers has it): ``learn_token`` then
  ``generate``, the token installed only inside ``installed_token``'s ``with`` block;
- ``lora``: ``train_lora`` (adapters on the denoiser's attention, installed only inside
  ``installed_lora``'s ``with`` block) then ``sample_lora``; weights saved as the family's
  pipeline saves them;
- ``dreambooth``: ``train_dreambooth`` (a private copy of the denoiser fine-tuned, optionally
  with prior preservation) then ``sample_dreambooth``;
- ``scenarios``: each of the above as a small frozen configuration with one ``run`` (``SCENARIOS``
  by name), what ``mimicshield mimic`` and ``mimicshield evaluate`` both run.
"""

from __future__ import annotations

from ..models import one_step_timestep
from .dreambooth import (
    CLASS_PROMPT,
    DREAMBOOTH_PRESETS,
    DreamBoothConfig,
    TunedDenoiser,
    dreambooth,
    sample_dreambooth,
    train_dreambooth,
)
from .inpaint import inpaint, is_inpainting_model
from .lora import (
    INSTANCE_PROMPT,
    LORA_PRESETS,
    LORA_WEIGHTS_FILE,
    LoRAConfig,
    LoRAWeights,
    installed_lora,
    lora,
    sample_lora,
    train_lora,
)
from .masks import MASKS, border_mask, center_mask, strokes_mask
from .scenarios import (
    SCENARIOS,
    DreamBoothScenario,
    InpaintScenario,
    LoRAScenario,
    Scenario,
    SDEditScenario,
    TextualInversionScenario,
)
from .sdedit import REFERENCE_STRENGTHS, denoising_steps, one_step_reconstruction, sdedit
from .textual_inversion import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TEXTUAL_INVERSION_PRESETS,
    LearnedToken,
    TextualInversionConfig,
    generate,
    initializer_embeddings,
    installed_token,
    learn_token,
    textual_inversion,
    token_encoders,
)

__all__ = [
    "CLASS_PROMPT",
    "DREAMBOOTH_PRESETS",
    "INSTANCE_PROMPT",
    "LORA_PRESETS",
    "LORA_WEIGHTS_FILE",
    "MASKS",
    "SCENARIOS",
    "DreamBoothConfig",
    "DreamBoothScenario",
    "LoRAConfig",
    "LoRAScenario",
    "LoRAWeights",
    "TunedDenoiser",
    "dreambooth",
    "installed_lora",
    "lora",
    "sample_dreambooth",
    "sample_lora",
    "train_dreambooth",
    "train_lora",
    "InpaintScenario",
    "Scenario",
    "SDEditScenario",
    "TextualInversionScenario",
    "OBJECT_TEMPLATES",
    "REFERENCE_STRENGTHS",
    "STYLE_TEMPLATES",
    "TEXTUAL_INVERSION_PRESETS",
    "LearnedToken",
    "TextualInversionConfig",
    "border_mask",
    "center_mask",
    "denoising_steps",
    "generate",
    "initializer_embeddings",
    "inpaint",
    "installed_token",
    "is_inpainting_model",
    "learn_token",
    "one_step_reconstruction",
    "one_step_timestep",
    "sdedit",
    "strokes_mask",
    "textual_inversion",
    "token_encoders",
]
