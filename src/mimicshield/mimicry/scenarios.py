"""The mimicry scenarios of an evaluation, each a small frozen configuration with one ``run``.

A scenario turns a set of images (clean, or protected and purified) into mimicry outputs, keyed by
*variant*: SDEdit yields one variant per strength (and per one-step reconstruction), inpainting
one, textual inversion, LoRA and DreamBooth one set of generated images each. Per-image
scenarios return one output per input; set scenarios (those that learn from the whole set) return
generated images that are compared as sets only. ``check(model)`` says, before any work, whether
a model's family can run the scenario as configured (every family runs every scenario but
textual inversion, which SD3 and FLUX lack, and SDEdit's reference conventions, which are DDIM's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..models import LatentDiffusion
from ..tensors import check_guidance, check_positive, check_strength
from .dreambooth import DreamBoothConfig, dreambooth
from .inpaint import inpaint
from .lora import LoRAConfig, lora
from .masks import MASKS
from .sdedit import check_reference_conventions, one_step_reconstruction, sdedit
from .textual_inversion import TextualInversionConfig, token_encoders
from .textual_inversion import textual_inversion as learn_and_generate


@dataclass(frozen=True)
class SDEditScenario:
    """Multi-step DDIM SDEdit at each strength, and optionally the one-step x̂₀ reconstruction."""

    name: ClassVar[str] = "sdedit"
    per_image: ClassVar[bool] = True

    strengths: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
    num_inference_steps: int = 100
    guidance_scale: float = 1.0  # the reference evaluates without guidance
    one_step: bool = True
    multi_step: bool = True
    #: the paper's reference code's start timesteps (see ``sdedit``'s module docstring)
    reference_conventions: bool = False

    def __post_init__(self) -> None:
        if not self.strengths:
            raise ValueError("SDEdit needs at least one strength")
        for strength in self.strengths:
            check_strength(strength)
        check_positive(self.num_inference_steps, "num_inference_steps")
        check_guidance(self.guidance_scale)
        if not (self.one_step or self.multi_step):
            raise ValueError("SDEdit needs one_step or multi_step (or both)")

    def check(self, model: LatentDiffusion) -> None:
        """Raise ValueError if ``model`` cannot run this: reference conventions on a flow model."""
        if self.reference_conventions:
            check_reference_conventions(model)

    def variants(self) -> list[str]:
        """The names of this scenario's outputs, as files and result rows use them."""
        multi = [f"sdedit@{strength:g}" for strength in self.strengths] if self.multi_step else []
        single = [f"onestep@{strength:g}" for strength in self.strengths] if self.one_step else []
        return multi + single

    def run(
        self,
        model: LatentDiffusion,
        images: torch.Tensor,
        *,
        prompt: str,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Mimic ``images`` (B, 3, H, W) in [0, 1] with ``model``: variant → outputs.

        Per-image scenarios return (B, 3, H, W) per variant; set scenarios their generated set.
        ``generator`` is the only randomness; same seed → same outputs.
        """
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        outputs = {}
        for strength in self.strengths:
            # Each variant draws from its own seed: adding a strength leaves the others unchanged.
            if self.multi_step:
                outputs[f"sdedit@{strength:g}"] = sdedit(
                    model,
                    images,
                    prompt=prompt,
                    strength=strength,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=torch.Generator().manual_seed(seed),
                    reference_conventions=self.reference_conventions,
                )
            if self.one_step:
                outputs[f"onestep@{strength:g}"] = one_step_reconstruction(
                    model,
                    images,
                    prompt=prompt,
                    strength=strength,
                    generator=torch.Generator().manual_seed(seed),
                    reference_conventions=self.reference_conventions,
                )
        return outputs


@dataclass(frozen=True)
class InpaintScenario:
    """Repaint a generated mask (``border`` keeps the subject and repaints around it)."""

    name: ClassVar[str] = "inpaint"
    per_image: ClassVar[bool] = True

    mask: str = "border"
    num_inference_steps: int = 100
    guidance_scale: float = 7.5
    #: (1, 1, H, W) in [0, 1], 1 = repaint, used instead of a generated mask (``mask`` = "file").
    mask_image: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mask_image is None and self.mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got '{self.mask}'")
        check_positive(self.num_inference_steps, "num_inference_steps")
        check_guidance(self.guidance_scale)

    def check(self, model: LatentDiffusion) -> None:
        """Nothing to refuse: every family has an inpainting pipeline."""

    def variants(self) -> list[str]:
        """The names of this scenario's outputs, as files and result rows use them."""
        return [f"inpaint-{'file' if self.mask_image is not None else self.mask}"]

    def run(
        self,
        model: LatentDiffusion,
        images: torch.Tensor,
        *,
        prompt: str,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Mimic ``images`` (B, 3, H, W) in [0, 1] with ``model``: variant → outputs.

        Per-image scenarios return (B, 3, H, W) per variant; set scenarios their generated set.
        ``generator`` is the only randomness; same seed → same outputs.
        """
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        mask = (
            self.mask_image
            if self.mask_image is not None
            else MASKS[self.mask](*images.shape[-2:], generator=torch.Generator().manual_seed(seed))
        )
        repainted = inpaint(
            model,
            images,
            mask,
            prompt=prompt,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
        )
        return {self.variants()[0]: repainted}


@dataclass(frozen=True)
class TextualInversionScenario:
    """Learn a token from the whole set, then generate ``num_images`` with it.

    Training uses the quick preset (``TextualInversionConfig()``) with ``steps`` steps, which keeps
    an evaluation's cost in proportion to its other scenarios; realistic settings are
    ``TEXTUAL_INVERSION_PRESETS["gpu"]`` through ``textual_inversion`` or ``mimic``.
    """

    name: ClassVar[str] = "textual-inversion"
    per_image: ClassVar[bool] = False

    steps: int = TextualInversionConfig().steps
    num_images: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    def check(self, model: LatentDiffusion) -> None:
        """Raise ValueError for a family without textual inversion (SD3, FLUX: use LoRA)."""
        token_encoders(model)

    def variants(self) -> list[str]:
        """The names of this scenario's outputs, as files and result rows use them."""
        return ["textual-inversion"]

    def run(
        self,
        model: LatentDiffusion,
        images: torch.Tensor,
        *,
        prompt: str,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Mimic ``images`` (B, 3, H, W) in [0, 1] with ``model``: variant → outputs.

        Per-image scenarios return (B, 3, H, W) per variant; set scenarios their generated set.
        ``generator`` is the only randomness; same seed → same outputs.
        """
        generated, _ = learn_and_generate(
            model,
            images,
            config=TextualInversionConfig(steps=self.steps),
            num_images=self.num_images,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generator,
        )
        return {"textual-inversion": generated}


@dataclass(frozen=True)
class _FineTuningScenario:
    """Fine-tune on the whole set, then generate ``num_images`` with what was learned.

    Subclasses name the scenario, type ``config`` and give the library function that trains and
    samples (``lora`` or ``dreambooth``).
    """

    name: ClassVar[str]
    per_image: ClassVar[bool] = False
    train_and_generate: ClassVar[Callable[..., tuple[torch.Tensor, object]]]

    config: object = None
    num_images: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        check_positive(self.num_images, "num_images")
        check_positive(self.num_inference_steps, "num_inference_steps")
        check_guidance(self.guidance_scale)

    def check(self, model: LatentDiffusion) -> None:
        """Nothing to refuse: every family's denoiser can be fine-tuned."""

    def variants(self) -> list[str]:
        """The names of this scenario's outputs, as files and result rows use them."""
        return [self.name]

    def run(
        self,
        model: LatentDiffusion,
        images: torch.Tensor,
        *,
        prompt: str,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Mimic ``images`` (B, 3, H, W) in [0, 1] with ``model``: variant → outputs.

        Generates from the instance prompt the model learned (``prompt``, the evaluation's
        description of the images, is not the imitator's). ``generator`` is the only randomness;
        same seed → same outputs.
        """
        generated, _ = type(self).train_and_generate(
            model,
            images,
            config=self.config,
            num_images=self.num_images,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generator,
        )
        return {self.name: generated}


@dataclass(frozen=True)
class LoRAScenario(_FineTuningScenario):
    """Fine-tune LoRA adapters on the whole set, then generate ``num_images`` with them."""

    name: ClassVar[str] = "lora"
    train_and_generate: ClassVar[Callable[..., tuple[torch.Tensor, object]]] = staticmethod(lora)

    config: LoRAConfig = LoRAConfig()


@dataclass(frozen=True)
class DreamBoothScenario(_FineTuningScenario):
    """Fine-tune a UNet copy on the whole set (DreamBooth), then generate ``num_images``."""

    name: ClassVar[str] = "dreambooth"
    train_and_generate: ClassVar[Callable[..., tuple[torch.Tensor, object]]] = staticmethod(
        dreambooth
    )

    config: DreamBoothConfig = DreamBoothConfig()


Scenario = (
    SDEditScenario | InpaintScenario | TextualInversionScenario | LoRAScenario | DreamBoothScenario
)

SCENARIOS: dict[str, type[Scenario]] = {
    scenario.name: scenario
    for scenario in (
        SDEditScenario,
        InpaintScenario,
        TextualInversionScenario,
        LoRAScenario,
        DreamBoothScenario,
    )
}
