"""The latent diffusion model adapter: the only code that knows the [-1, 1] range and latent scale.

A ``LatentDiffusion`` bundles the diffusers/transformers parts of a Stable Diffusion checkpoint
(``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``) and offers the few operations
that protection, mimicry and metrics need: ``encode``, ``decode``, ``embed``, ``add_noise``,
``predict`` and ``target``, and the schedule algebra (ᾱ_t, x̂₀, the timestep of a strength), so
no other module reads the scheduler's internals. It is passed around, never owned, so one loaded
model serves all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..tensors import check_range, check_strength
from . import random_weights
from .devices import ModelUnavailableError, resolve_device, resolve_dtype
from .hub import hub_reachable

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The miniature model shipped with the package (see weights/mini/README.md): not Stable Diffusion.
MINI_MODEL_DIR = Path(__file__).parent.parent / "weights" / "mini"
#: Names that build a randomly initialised model from a config instead of loading weights.
RANDOM_MODELS = {"tiny": random_weights.TINY, "sd15-random": random_weights.SD15}
#: UNet input channels of an SD inpainting model: latent 4 + mask 1 + masked-image latent 4.
INPAINTING_UNET_CHANNELS = 9


@dataclass(frozen=True)
class Posterior:
    """The encoder's q(z | x) = N(mean, exp(logvar)) in the VAE's own (unscaled) latent units.

    Attributes:
        mean: (B, C, h, w) μ, in the model's dtype.
        logvar: (B, C, h, w) ln σ², clamped to [−30, 20] as diffusers does.
        std: (B, C, h, w) σ = exp(logvar / 2).
        scaling_factor: the VAE's latent scale (0.18215 for SD 1.x/2.x).
    """

    mean: torch.Tensor
    logvar: torch.Tensor
    std: torch.Tensor
    scaling_factor: float

    def latents(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents: (μ + σ · noise) · scaling_factor, or μ · scaling_factor without noise."""
        latents = self.mean
        if noise is not None:
            latents = latents + self.std * noise.to(latents)
        return latents * self.scaling_factor


@dataclass
class LatentDiffusion:
    """A Stable Diffusion 1.x/2.x model seen through the operations mimicry needs.

    Attributes:
        vae, unet, text_encoder, tokenizer, scheduler: the diffusers/transformers parts.
        name: hub id, folder or random-architecture name it came from (for records).
        random_weights: True when the weights are random (a test or benchmark model).
    """

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    name: str = "unnamed"
    random_weights: bool = False
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _blank_cache: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "fp32",
    ) -> LatentDiffusion:
        """Load a diffusers-format Stable Diffusion from a hub id or a local folder.

        ``mini`` names the miniature model shipped with the package; ``tiny`` and ``sd15-random``
        build random-weight models from a config (tests, benchmarks). Anything else goes through
        the usual ``from_pretrained`` and Hugging Face cache.

        Raises:
            ModelUnavailableError: the weights are missing and cannot be downloaded.
        """
        name = str(name_or_path)
        torch_device = device if isinstance(device, torch.device) else resolve_device(device)
        torch_dtype = resolve_dtype(dtype)
        if name in RANDOM_MODELS:
            return cls.random(name).to(torch_device, torch_dtype)
        source = str(MINI_MODEL_DIR) if name == "mini" else name
        return cls._load_parts(source, label=name, dtype=torch_dtype).to(torch_device)

    @classmethod
    def _load_parts(cls, source: str, *, label: str, dtype: torch.dtype) -> LatentDiffusion:
        if label == "mini" and not (MINI_MODEL_DIR / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"the miniature model is not installed at {MINI_MODEL_DIR}; reinstall mimicshield"
            )
        # Without a reachable hub, read the cache only: the hub client would otherwise retry
        # for tens of seconds before failing with the same answer.
        local = {"local_files_only": Path(source).exists() or not hub_reachable()}
        try:
            return cls(
                vae=AutoencoderKL.from_pretrained(
                    source, subfolder="vae", torch_dtype=dtype, **local
                ),
                unet=UNet2DConditionModel.from_pretrained(
                    source, subfolder="unet", torch_dtype=dtype, **local
                ),
                text_encoder=CLIPTextModel.from_pretrained(
                    source, subfolder="text_encoder", torch_dtype=dtype, **local
                ),
                tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **local),
                scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **local),
                name=label,
            )
        except (OSError, ValueError) as error:
            logger.debug("loading %s failed", source, exc_info=error)
            raise ModelUnavailableError(_missing_model_sentence(source)) from None

    @classmethod
    def random(cls, architecture: str = "tiny", *, seed: int = 0) -> LatentDiffusion:
        """Build a model with random weights from one of ``RANDOM_MODELS`` (seeded, CPU, fp32)."""
        config = RANDOM_MODELS[architecture]
        # Module constructors draw from the global RNG; fork it so the caller's state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKL(**config["vae"])
            unet = UNet2DConditionModel(**config["unet"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
        with tempfile.TemporaryDirectory() as folder:
            random_weights.write_test_tokenizer(folder)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        scheduler = DDPMScheduler(**config["scheduler"])
        return cls(vae, unet, text_encoder, tokenizer, scheduler, architecture, random_weights=True)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a diffusers StableDiffusionPipeline folder that ``from_pretrained`` reads back."""
        folder = Path(folder)
        for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
            getattr(self, part).save_pretrained(folder / part)
        index = {
            "_class_name": "StableDiffusionPipeline",
            "vae": ["diffusers", "AutoencoderKL"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LatentDiffusion:
        """Move all networks (in place) and return self."""
        for network in (self.vae, self.unet, self.text_encoder):
            if dtype is None or dtype == network.dtype:
                network.to(device=device)
            else:
                network.to(device=device, dtype=dtype)
        self._prompt_cache.clear()
        self._blank_cache.clear()
        return self

    # ------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        """Where the networks live (the UNet's device)."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' precision (the UNet's dtype)."""
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def is_inpainting(self) -> bool:
        """True for an SD inpainting model (9-channel UNet: latent, mask, masked-image latent)."""
        return self.unet.config.in_channels == INPAINTING_UNET_CHANNELS

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (4 for Stable Diffusion 1.x/2.x)."""
        return self.vae.config.latent_channels

    @property
    def num_train_timesteps(self) -> int:
        """T: diffusion timesteps of the training schedule (1000)."""
        return self.scheduler.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: "epsilon" or "v_prediction"."""
        return self.scheduler.config.prediction_type

    @property
    def native_resolution(self) -> int:
        """The side in pixels the denoiser was trained at (512 for SD 1.x, 768 for SD 2.x 768)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def latent_shape(self, images: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the latents of (B, 3, H, W) images."""
        batch, _, height, width = images.shape
        factor = self.vae_scale_factor
        return (batch, self.latent_channels, height // factor, width // factor)

    def describe(self) -> dict[str, object]:
        """Facts about the model for provenance records."""
        return {
            "name": self.name,
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
        parts = {
            "vae": dict(self.vae.config),
            "unet": dict(self.unet.config),
            "scheduler": dict(self.scheduler.config),
            "text_encoder": self.text_encoder.config.to_dict(),
        }
        kept = {
            part: {
                key: value
                for key, value in config.items()
                if not key.startswith("_") and key not in bookkeeping
            }
            for part, config in parts.items()
        }
        canonical = json.dumps(kept, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    # ------------------------------------------------------------- operations

    @contextlib.contextmanager
    def frozen(self) -> Iterator[LatentDiffusion]:
        """Eval mode and no weight gradients inside; each module's previous state restored after."""
        networks = (self.vae, self.unet, self.text_encoder)
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
        """Images → scaled latents: the posterior mean, or a reparameterised sample.

        Args:
            images: (B, 3, H, W) in [0, 1], H and W multiples of ``vae_scale_factor``.
            posterior_noise: (B, C, h, w) standard normal; when given, the latent is
                mean + std · noise (a posterior sample, differentiable in the images).

        Returns:
            (B, C, h, w) latents times the VAE's ``scaling_factor``, in the model's dtype.
        """
        return self.posterior(images).latents(posterior_noise)

    def posterior(self, images: torch.Tensor) -> Posterior:
        """The encoder's diagonal Gaussian q(z | x) of images (B, 3, H, W) in [0, 1].

        One encoder pass, differentiable in the images; ``Posterior.latents`` turns it into the
        scaled latents ``encode`` returns.
        """
        pixels = images.to(self.device, self.dtype) * 2 - 1
        distribution = self.vae.encode(pixels).latent_dist
        return Posterior(
            mean=distribution.mean,
            logvar=distribution.logvar,
            std=distribution.std,
            scaling_factor=self.vae.config.scaling_factor,
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) → images (B, 3, H, W) float32 in [0, 1]."""
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → text-encoder hidden states (B, L, D), cached per prompt, no gradient."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._prompt_cache]
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                states = self.text_encoder(tokens.input_ids.to(self.device))[0]
            for prompt, state in zip(missing, states, strict=True):
                self._prompt_cache[prompt] = state.to(self.dtype)
        return torch.stack([self._prompt_cache[prompt] for prompt in prompts])

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward diffusion q(z_t | z_0): √ᾱ_t · z + √(1 − ᾱ_t) · ε, per image timestep."""
        alpha, sigma = self._alpha_sigma(timesteps, latents)
        return alpha * latents + sigma * noise.to(latents)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's raw output (ε or v, per ``prediction_type``) for (B, C, h, w) latents.

        An inpainting UNet also takes a mask and the masked image's latents; it is given the
        "repaint everything" condition (``repaint_everything``), under which it is a plain
        text-to-image denoiser, so protection, SDEdit and textual inversion treat it like a base
        model. The reference attacked only base models, and its author applied the same global,
        unmasked attack against inpainting (Diff-Protect issue #6), which this matches.
        """
        inputs = noisy_latents
        if self.is_inpainting:
            mask, masked_latents = self.repaint_everything(noisy_latents)
            inputs = torch.cat([noisy_latents, mask, masked_latents], dim=1)
        return self.unet(inputs, timesteps.to(self.device), encoder_hidden_states=embeddings).sample

    def repaint_everything(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An inpainting UNet's extra inputs for a mask that covers the whole image.

        What diffusers' inpainting pipeline feeds for an all-white mask: the mask, all ones, and
        the latents of the masked image, which is then all zeros in [-1, 1] (mid grey). The grey
        image is encoded once per size (posterior mean) and kept.

        Args:
            like: (B, C, h, w) latents whose batch, size, device and dtype the inputs take.

        Returns:
            mask (B, 1, h, w) of ones and masked-image latents (B, C, h, w), no gradient.
        """
        batch, _, height, width = like.shape
        key = (height, width, like.device, like.dtype)
        if key not in self._blank_cache:
            factor = self.vae_scale_factor
            grey = torch.full((1, 3, height * factor, width * factor), 0.5, device=self.device)
            with torch.no_grad():
                self._blank_cache[key] = self.encode(grey).to(like.device, like.dtype)
        masked_latents = self._blank_cache[key].expand(batch, -1, -1, -1)
        mask = torch.ones(batch, 1, height, width, device=like.device, dtype=like.dtype)
        return mask, masked_latents

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What ``predict`` is trained to output: ε, or v = √ᾱ·ε − √(1−ᾱ)·z for v-prediction."""
        if self.prediction_type == "epsilon":
            return noise.to(latents)
        if self.prediction_type == "v_prediction":
            alpha, sigma = self._alpha_sigma(timesteps, latents)
            return alpha * noise.to(latents) - sigma * latents
        raise NotImplementedError(f"prediction type '{self.prediction_type}' is not supported")

    def predicted_noise(
        self, output: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Express a ``predict`` output as ε̂ (for v: ε̂ = √ᾱ·v̂ + √(1−ᾱ)·z_t)."""
        if self.prediction_type == "epsilon":
            return output
        if self.prediction_type == "v_prediction":
            alpha, sigma = self._alpha_sigma(timesteps, noisy_latents)
            return alpha * output + sigma * noisy_latents
        raise NotImplementedError(f"prediction type '{self.prediction_type}' is not supported")

    def predict_start(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x̂₀, the clean latents a ``predict`` output implies: (z_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t.

        lucidrains' ``predict_start_from_noise``, for the model's own prediction type: ε̂ is the
        output itself, or recovered from v by ``predicted_noise``.

        Args:
            noisy_latents: (B, C, h, w) z_t.
            timesteps: (B,) int64, t of each latent.
            model_output: (B, C, h, w) what ``predict`` returned for them.

        Returns:
            (B, C, h, w) in the dtype of ``noisy_latents``.
        """
        noise = self.predicted_noise(model_output, noisy_latents, timesteps)
        alpha_bar = self.alpha_bar(timesteps.to(noisy_latents.device)).double()
        shape = (-1,) + (1,) * (noisy_latents.dim() - 1)
        # Square roots in float64, arithmetic in at least float32, one rounding at the end: for
        # float32 latents, exactly the scalar formula with ᾱ_t as the scheduler stores it.
        dtype = torch.promote_types(noisy_latents.dtype, torch.float32)
        alpha = alpha_bar.sqrt().view(shape).to(dtype)
        sigma = (1 - alpha_bar).sqrt().view(shape).to(dtype)
        return ((noisy_latents - sigma * noise) / alpha).to(noisy_latents.dtype)

    # ------------------------------------------------------------- the schedule

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """ᾱ_t = ∏_{s ≤ t} (1 − β_s), the signal variance left at t (near 1 at 0, near 0 at T − 1).

        Args:
            timesteps: int64 tensor of any shape, each in [0, T).

        Returns:
            The scheduler's float32 ᾱ_t, same shape and device as ``timesteps``.
        """
        return self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps]

    def one_step_timestep(self, strength: float) -> int:
        """The timestep a strength noises to in one jump: ``one_step_timestep(strength, T)``."""
        return one_step_timestep(strength, self.num_train_timesteps)

    def ddim_timesteps(self, start: int, num_inference_steps: int) -> list[int]:
        """The timesteps a deterministic DDIM run visits from ``start`` down to 0.

        start, start − k, start − 2k, … ≥ 0, with k = T // N the stride of an N-step schedule
        over the T training timesteps (N = ``num_inference_steps``, in [1, T]).
        """
        total = self.num_train_timesteps
        check_range(num_inference_steps, "num_inference_steps", 1, total, whole=True)
        return list(range(start, -1, -(total // num_inference_steps)))

    def _alpha_sigma(
        self, timesteps: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """√ᾱ_t and √(1 − ᾱ_t), shaped (B, 1, 1, 1) to broadcast over ``like``."""
        alphas_cumprod = self.alpha_bar(timesteps.to(like.device))
        shape = (-1,) + (1,) * (like.dim() - 1)
        alpha = alphas_cumprod.sqrt().view(shape).to(like.dtype)
        sigma = (1 - alphas_cumprod).sqrt().view(shape).to(like.dtype)
        return alpha, sigma


def model_notes(model: LatentDiffusion) -> list[str]:
    """What a user must know about the model before trusting any result: random or miniature."""
    if model.random_weights:
        return [
            f"model '{model.name}' has RANDOM weights: this run exercises the code path and "
            "protects against nothing real."
        ]
    if model.name == "mini":
        return [
            "model 'mini' is a miniature trained here on a few thousand small images for "
            "demonstration; it is not Stable Diffusion and results against it say nothing about "
            "real models."
        ]
    return []


def one_step_timestep(strength: float, num_train_timesteps: int = 1000) -> int:
    """The timestep of a one-jump noising at ``strength``: s·T counted from 1, i.e. round(s·T) − 1.

    Strength 1 gives T − 1 (pure noise for SD), 0.3 gives 299; tiny strengths give 0. The
    one-step reconstruction and diffusion purification both start there.
    """
    check_strength(strength)
    return max(0, round(strength * num_train_timesteps) - 1)


def _missing_model_sentence(source: str) -> str:
    if Path(source).exists():
        return (
            f"'{source}' is not a complete diffusers Stable Diffusion folder (it needs vae/, "
            "unet/, text_encoder/, tokenizer/ and scheduler/); use a folder saved with "
            "save_pretrained or a hub id instead."
        )
    return (
        f"The model '{source}' is not in the local Hugging Face cache and cannot be downloaded "
        f"now (no network, or HF_HUB_OFFLINE=1): download it once with `hf download {source}` "
        "on a machine with network, or use a local diffusers folder instead (or 'mini', the "
        "bundled miniature)."
    )
