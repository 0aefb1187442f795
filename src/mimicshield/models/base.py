"""The adapter interface every model family implements, and what the families share.

A ``LatentDiffusion`` is one latent diffusion model (Stable Diffusion 1.x/2.x, SDXL, SD3/3.5,
FLUX.1) seen through the few operations that protection, mimicry and metrics need:

- the VAE, shared by every family: ``posterior``, ``encode``, ``decode`` (latents are
  ``(z − shift_factor) · scaling_factor``; the shift is 0 before SD3);
- the family's own terms: ``embed`` (prompts → ``PromptEmbeddings``), ``add_noise`` (the forward
  process q(z_t | z_0)), ``predict`` (the denoiser's raw output: ε, v or flow velocity),
  ``target`` (what that output is trained to match), ``predicted_noise`` (the output as ε̂, the
  score-distillation residual's common form), ``predict_start`` (x̂₀);
- the family's diffusers pipelines over the loaded parts (``pipeline``), for mimicry.

Timesteps are integer indices t ∈ {0, …, T − 1} for every family, so one ``StepNoise`` draw
serves all; each family maps t to its own noise level (ᾱ_t for DDPM, σ_t for flow matching).
Models are passed around, never owned, so one loaded model serves protection, mimicry, metrics
and the web page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline

from ..tensors import check_strength
from . import random_weights
from .random_weights import test_tokenizer


@dataclass(frozen=True)
class Posterior:
    """The encoder's q(z | x) = N(mean, exp(logvar)) in the VAE's own (unscaled) latent units.

    Attributes:
        mean: (B, C, h, w) μ, in the model's dtype.
        logvar: (B, C, h, w) ln σ², clamped to [−30, 20] as diffusers does.
        std: (B, C, h, w) σ = exp(logvar / 2).
        scaling_factor: the VAE's latent scale (0.18215 for SD 1.x/2.x, 1.5305 for SD3).
        shift_factor: the VAE's latent shift (0 before SD3; 0.0609 for SD3, 0.1159 for FLUX).
    """

    mean: torch.Tensor
    logvar: torch.Tensor
    std: torch.Tensor
    scaling_factor: float
    shift_factor: float = 0.0

    def latents(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Model latents: (μ + σ · noise − shift) · scale, or (μ − shift) · scale without noise."""
        latents = self.mean
        if noise is not None:
            latents = latents + self.std * noise.to(latents)
        return (latents - self.shift_factor) * self.scaling_factor


@dataclass(frozen=True)
class PromptEmbeddings:
    """A batch of encoded prompts, in the form the family's denoiser takes them.

    Attributes:
        hidden_states: (B, L, D) the text encoders' token states (SD: CLIP's last layer; SDXL:
            two CLIPs' penultimate layers side by side; SD3: CLIP-L ‖ CLIP-G then T5 along the
            sequence; FLUX: T5).
        pooled: (B, P) the pooled prompt vector (SDXL, SD3, FLUX), or None (SD 1.x/2.x).
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def repeat(self, times: int) -> PromptEmbeddings:
        """The batch repeated ``times`` times along dim 0 (the layout of stacked noise draws)."""
        return self.map(lambda tensor: tensor.repeat(times, *([1] * (tensor.dim() - 1))))

    def expand(self, batch: int) -> PromptEmbeddings:
        """A batch of one prompt seen as ``batch`` rows (no copy)."""
        return self.map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeddings:
        """On ``device`` in ``dtype``."""
        return self.map(lambda tensor: tensor.to(device, dtype))

    def map(self, function) -> PromptEmbeddings:
        """Apply a tensor → tensor function to every part."""
        pooled = None if self.pooled is None else function(self.pooled)
        return replace(self, hidden_states=function(self.hidden_states), pooled=pooled)


@dataclass
class LatentDiffusion:
    """Base of the model families: the VAE operations, state handling and records they share.

    A family subclass declares its parts (``part_names``: the attributes that are diffusers or
    transformers objects, ``network_names``: those that are torch modules), the pipeline classes
    that identify it in a ``model_index.json`` (``pipeline_names``) and implements the
    family's own operations listed in the module docstring.

    Load any family with ``LatentDiffusion.from_pretrained`` (it reads ``model_index.json`` or
    the single file and picks the family); build a random one with ``LatentDiffusion.random``.

    Attributes:
        vae: the AutoencoderKL (every family has one).
        name: hub id, folder, file or random-architecture name it came from (for records).
        random_weights: True when the weights are random (a test or benchmark model).
    """

    #: Short name in records and messages: "sd", "sdxl", "sd3", "flux".
    family: ClassVar[str]
    #: Attributes holding diffusers/transformers parts, in model_index.json order.
    part_names: ClassVar[tuple[str, ...]]
    #: The parts that are torch modules (moved, frozen, digested).
    network_names: ClassVar[tuple[str, ...]]
    #: The pipeline classes (``model_index.json`` ``_class_name``) that hold this family.
    pipeline_names: ClassVar[tuple[str, ...]]
    #: The denoiser's part name: "unet" or "transformer" (what pipelines and LoRA files call it).
    denoiser_name: ClassVar[str]
    vae: AutoencoderKL
    name: str = field(default="unnamed", kw_only=True)
    random_weights: bool = field(default=False, kw_only=True)
    _prompt_cache: dict[str, PromptEmbeddings] = field(
        default_factory=dict, repr=False, kw_only=True
    )

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "fp32",
        config: str | os.PathLike | None = None,
    ) -> LatentDiffusion:
        """Load any family from a hub id, a diffusers folder or a single ``.safetensors`` file.

        ``mini`` and ``mini-flow`` name the miniatures shipped with the package; the names in
        ``RANDOM_MODELS`` build random-weight models from a config (tests, benchmarks). The
        family comes from the folder's ``model_index.json`` (or the single file's keys); a single
        file's architecture configuration comes from ``config`` (a hub id or local diffusers
        folder) or diffusers' reference repository for the detected type.

        Raises:
            ModelUnavailableError: the weights or configuration are missing and cannot be
                downloaded; the message says what is missing and how to get it.
        """
        from .loading import DEFAULT_MODEL, load_model

        return load_model(name_or_path or DEFAULT_MODEL, device=device, dtype=dtype, config=config)

    @classmethod
    def random(cls, architecture: str = "tiny", *, seed: int = 0) -> LatentDiffusion:
        """A model with random weights from one of ``RANDOM_MODELS`` (seeded, CPU, fp32)."""
        from .loading import random_model

        return random_model(architecture, seed=seed)

    @classmethod
    def from_pipeline(
        cls, pipeline: DiffusionPipeline, *, name: str, random_weights: bool = False
    ) -> LatentDiffusion:
        """The adapter over a loaded diffusers pipeline's parts (not copied)."""
        components = pipeline.components
        parts = {part: components.get(part) for part in cls.part_names}
        return cls(**parts, name=name, random_weights=random_weights)

    @classmethod
    def from_config(cls, config: dict, *, name: str, seed: int = 0) -> LatentDiffusion:
        """Random weights from a ``random_weights`` configuration (one dict per part).

        Parts the configuration leaves out (SD3's T5) are None; each text encoder gets the
        offline test tokenizer of its kind.
        """
        parts = random_weights.random_parts(cls.family, config, seed=seed)
        for index in ("", "_2", "_3"):
            if f"tokenizer{index}" in cls.part_names:
                encoder = parts.get(f"text_encoder{index}")
                kind = "t5" if type(encoder).__name__.startswith("T5") else "clip"
                parts[f"tokenizer{index}"] = None if encoder is None else test_tokenizer(kind)
        parts = {part: parts.get(part) for part in cls.part_names}
        return cls(**parts, name=name, random_weights=True)

    @classmethod
    def pipeline_arguments(cls) -> dict[str, object]:
        """Arguments the family's pipelines get besides the parts (none by default).

        Given when a pipeline is built over the parts (``pipeline``) and when one is loaded
        (``from_pretrained``, ``from_single_file``).
        """
        return {}

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a diffusers pipeline folder (with the model's own scheduler) to load back."""
        self.pipeline("text2img", scheduler=self.scheduler).save_pretrained(folder)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentDiffusion:
        """Move all networks (in place) and return self."""
        for network in self.networks:
            if dtype is None or dtype == network.dtype:
                network.to(device=device)
            else:
                network.to(device=device, dtype=dtype)
        self.clear_caches()
        return self

    def clear_caches(self) -> None:
        """Forget cached prompt embeddings (after moving or changing a network)."""
        self._prompt_cache.clear()

    # ------------------------------------------------------------- properties

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        """The torch modules among the parts (absent optional ones left out)."""
        return tuple(
            getattr(self, name) for name in self.network_names if getattr(self, name) is not None
        )

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that predicts noise, v or velocity (a UNet or a transformer)."""
        return getattr(self, self.denoiser_name)

    def with_parts(self, **parts: object) -> LatentDiffusion:
        """A model sharing every part of this one but ``parts``, with caches of its own.

        Nothing is copied; the caches (prompt embeddings, grey latents) start empty, so that what
        the new model computes with its own parts never reaches this one's.
        """
        caches = {
            item.name: item.default_factory()
            for item in fields(self)
            if item.name.endswith("_cache") and item.default_factory is not MISSING
        }
        return replace(self, **parts, **caches)

    @property
    def device(self) -> torch.device:
        """Where the networks live (the denoiser's device)."""
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' precision (the denoiser's dtype)."""
        return self.denoiser.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for the released models)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """What image sides must be a multiple of: the VAE's factor times the denoiser's patch."""
        return self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (4 for SD 1.x/2.x and SDXL, 16 for SD3 and FLUX)."""
        return self.vae.config.latent_channels

    @property
    def vae_float32_in_float16(self) -> bool:
        """Whether the VAE stays float32 when the model runs in float16 (SDXL's overflows)."""
        return False

    @property
    def prediction_type(self) -> str:
        """What ``predict`` returns: "epsilon", "v_prediction" or "flow" (velocity ε − z)."""
        raise NotImplementedError

    @property
    def is_inpainting(self) -> bool:
        """True for a dedicated inpainting denoiser (extra mask and masked-image inputs)."""
        return False

    @property
    def num_train_timesteps(self) -> int:
        """T: the number of timestep indices (1000 for every family)."""
        return self.scheduler.config.num_train_timesteps

    @property
    def native_resolution(self) -> int:
        """The side in pixels the denoiser was trained at (512 for SD 1.5, 1024 for SDXL)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    @property
    def patch_size(self) -> int:
        """Latent cells per denoiser token along one side (1 for UNets, 2 for SD3 and FLUX)."""
        return 1

    def latent_shape(self, images: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the latents of (B, 3, H, W) images: (B, C, H / f, W / f)."""
        batch, _, height, width = images.shape
        factor = self.vae_scale_factor
        return (batch, self.latent_channels, height // factor, width // factor)

    def describe(self) -> dict[str, object]:
        """Facts about the model for provenance records."""
        return {
            "name": self.name,
            "family": self.family,
            "random_weights": self.random_weights,
            "prediction_type": self.prediction_type,
            "inpainting": self.is_inpainting,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }

    def config_digest(self) -> str:
        """SHA-256 of the parts' configurations: which architecture and schedule this is.

        What a trained protector records about its surrogate. Bookkeeping keys (``_name_or_path``,
        library versions, the dtype) are left out, so a model loaded from another folder, in
        another precision or built from the same config digests the same; two checkpoints of one
        architecture (SD 1.5 and a fine-tune of it) do too: the digest tells configurations apart,
        not weights.
        """
        bookkeeping = {"architectures", "dtype", "torch_dtype", "transformers_version"}
        kept = {}
        for part in (*self.network_names, "scheduler"):
            value = getattr(self, part)
            if value is None:
                continue
            config = value.config
            config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            kept[part] = {
                key: item
                for key, item in config.items()
                if not key.startswith("_") and key not in bookkeeping
            }
        canonical = json.dumps(kept, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    # -------------------------------------------------------- the VAE (shared)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[LatentDiffusion]:
        """Eval mode and no weight gradients inside; each module's previous state restored after."""
        networks = self.networks
        modes = [(module, module.training) for net in networks for module in net.modules()]
        flags = [(param, param.requires_grad) for net in networks for param in net.parameters()]
        try:
            for net in networks:
                net.eval().requires_grad_(False)
            yield self
        finally:
            for module, training in modes:
                module.training = training
            for param, requires_grad in flags:
                param.requires_grad_(requires_grad)

    def encode(
        self, images: torch.Tensor, posterior_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images → model latents: the posterior mean, or a reparameterised sample.

        Args:
            images: (B, 3, H, W) in [0, 1], H and W multiples of ``vae_scale_factor``.
            posterior_noise: (B, C, h, w) standard normal; when given, the latent is
                mean + std · noise (a posterior sample, differentiable in the images).

        Returns:
            (B, C, h, w) latents, shifted and scaled as the denoiser takes them, in the model's
            dtype.
        """
        return self.posterior(images).latents(posterior_noise).to(self.dtype)

    def posterior(self, images: torch.Tensor) -> Posterior:
        """The encoder's diagonal Gaussian q(z | x) of images (B, 3, H, W) in [0, 1].

        One encoder pass, differentiable in the images; ``Posterior.latents`` turns it into the
        latents ``encode`` returns. Runs in the VAE's own dtype, which a family may keep wider
        than the rest (SDXL's VAE overflows in float16).
        """
        pixels = images.to(self.device, self.vae.dtype) * 2 - 1
        distribution = self.vae.encode(pixels).latent_dist
        return Posterior(
            mean=distribution.mean,
            logvar=distribution.logvar,
            std=distribution.std,
            scaling_factor=self.vae.config.scaling_factor,
            shift_factor=self.vae.config.get("shift_factor") or 0.0,
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents (B, C, h, w) → images (B, 3, H, W) float32 in [0, 1]."""
        config = self.vae.config
        unscaled = latents.to(self.vae.dtype) / config.scaling_factor
        unscaled = unscaled + (config.get("shift_factor") or 0.0)
        pixels = self.vae.decode(unscaled).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    # ------------------------------------------------- the family's own terms

    def embed(self, prompts: list[str]) -> PromptEmbeddings:
        """Prompts → the denoiser's text condition, cached per prompt, no gradient."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                encoded = self.encode_prompts(missing)
            for row, prompt in enumerate(missing):
                self._prompt_cache[prompt] = encoded.map(
                    lambda tensor, row=row: tensor[row : row + 1].to(self.dtype)
                )
        rows = [self._prompt_cache[prompt] for prompt in prompts]
        pooled = None if rows[0].pooled is None else torch.cat([row.pooled for row in rows])
        return PromptEmbeddings(torch.cat([row.hidden_states for row in rows]), pooled)

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """The family's text encoding of distinct prompts (the uncached part of ``embed``)."""
        raise NotImplementedError

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The forward process q(z_t | z_0) at integer timesteps (B,), per image."""
        raise NotImplementedError

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embeddings: PromptEmbeddings
    ) -> torch.Tensor:
        """The denoiser's raw output for (B, C, h, w) noisy latents at integer timesteps (B,)."""
        raise NotImplementedError

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What ``predict`` is trained to output for clean ``latents`` noised with ``noise``."""
        raise NotImplementedError

    def predicted_noise(
        self, output: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """A ``predict`` output expressed as ε̂, the noise estimate in z_t = a_t·z + b_t·ε."""
        raise NotImplementedError

    def predict_start(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x̂₀: the clean latents a ``predict`` output implies, in the dtype of ``noisy_latents``."""
        raise NotImplementedError

    def one_step_timestep(self, strength: float) -> int:
        """The timestep a strength noises to in one jump: ``one_step_timestep(strength, T)``."""
        return one_step_timestep(strength, self.num_train_timesteps)

    def pipeline(self, task: str, **overrides: object) -> DiffusionPipeline:
        """The family's diffusers pipeline for ``task`` over the loaded parts (nothing copied).

        Args:
            task: "text2img", "img2img" or "inpaint".
            overrides: replaced parts (a sampling scheduler, an extended tokenizer, a fine-tuned
                denoiser).

        The scheduler is a fresh object (pipelines set its timesteps), so the shared one is never
        mutated; no safety checker (research use on the user's own images) and no progress bar.
        """
        pipeline_class = self.pipeline_classes()[task]
        parts = {name: getattr(self, name) for name in self.part_names}
        parts["scheduler"] = self.sampling_scheduler()
        parts |= self.pipeline_arguments() | overrides
        pipeline = pipeline_class(**parts)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @classmethod
    def pipeline_classes(cls) -> dict[str, type[DiffusionPipeline]]:
        """The family's diffusers pipeline class per task ("text2img", "img2img", "inpaint")."""
        raise NotImplementedError

    def sampling_scheduler(self):
        """A fresh scheduler for the pipelines, from the model's own configuration."""
        return type(self.scheduler).from_config(self.scheduler.config)


def one_step_timestep(strength: float, num_train_timesteps: int = 1000) -> int:
    """The timestep of a one-jump noising at ``strength``: s·T counted from 1, i.e. round(s·T) − 1.

    Strength 1 gives T − 1 (pure noise), 0.3 gives 299; tiny strengths give 0. The one-step
    reconstruction and diffusion purification both start there.
    """
    check_strength(strength)
    return max(0, round(strength * num_train_timesteps) - 1)
