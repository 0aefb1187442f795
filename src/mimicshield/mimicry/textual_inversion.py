"""Textual inversion: learn one new word embedding from a few images, then generate with it.

Gal et al., "An image is worth one word: personalizing text-to-image generation using textual
inversion", ICLR 2023. A placeholder token v* gets an embedding vector, initialised from a coarse
descriptor ("painting"); it is trained with the usual denoising loss on prompts such as
"a painting in the style of v*" while every network stays frozen, so the gradient reaches only
that one vector (through the UNet's cross-attention and the text encoder).

The shared tokenizer and text encoder are never modified: ``installed_token`` hands out an
extended *copy* of the tokenizer and swaps the text encoder's input-embedding module for one that
adds the new row, only inside a ``with`` block; afterwards the original module is back in place,
so vocabulary, weights, flags and modes are exactly what they were.

Settings: ``TextualInversionConfig()`` is quick (500 steps of one image: seconds on the tiny test
model, what ``mimicshield evaluate`` runs); ``TEXTUAL_INVERSION_PRESETS["gpu"]`` is diffusers'
``textual_inversion.py`` example for real models.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from ..models import LatentDiffusion, PromptEmbeddings
from ..objectives import StepNoise, denoising_loss
from ..tensors import check_images, check_positive, pad_to_multiple, randint
from ._common import text_to_image

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Called after each training step with (step, steps, loss).
TrainingCallback = Callable[[int, int, float], None]

#: Prompts for learning a style (a selection of the original method's style templates).
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a small painting in the style of {}",
    "a large painting in the style of {}",
)

#: Prompts for learning an object or subject (a selection of the original's object templates).
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
    "a photo of one {}",
    "a large photo of the {}",
)


@dataclass(frozen=True)
class TextualInversionConfig:
    """How the token is learned.

    The defaults are quick; ``TEXTUAL_INVERSION_PRESETS["gpu"]`` holds the diffusers example's
    values.
    """

    #: The new word; lower case (CLIP lower-cases prompts) and not already in the vocabulary.
    placeholder: str = "<mimicshield-concept>"
    #: Its embedding starts at this word's (the mean of its tokens' rows if it has several).
    initializer: str = "painting"
    #: Optimisation steps (quick; the paper and diffusers' example train 3000–5000).
    steps: int = 500
    #: AdamW's constant step size (the original's base rate 5e-3; torch's other AdamW defaults,
    #: which are the example's: β = (0.9, 0.999), weight decay 0.01, ε = 1e-8).
    learning_rate: float = 5e-3
    #: Images per step, drawn with replacement from the set.
    batch_size: int = 1
    #: Training prompts, "{}" standing for the placeholder; one drawn per image and step.
    templates: tuple[str, ...] = STYLE_TEMPLATES

    def __post_init__(self) -> None:
        if not self.placeholder or self.placeholder != self.placeholder.lower().strip():
            raise ValueError(
                f"placeholder must be non-empty lower case without surrounding spaces (CLIP "
                f"lower-cases prompts), got {self.placeholder!r}"
            )
        if not self.initializer.strip():
            raise ValueError(f"initializer must be a word, got {self.initializer!r}")
        check_positive(self.steps, "steps")
        check_positive(self.batch_size, "batch_size")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.templates or any("{}" not in template for template in self.templates):
            raise ValueError(
                f"templates must be non-empty and each contain '{{}}', got {self.templates!r}"
            )


#: Named settings: ``quick`` (tests, CPU, the miniature, ``evaluate``) and ``gpu`` (diffusers'
#: ``textual_inversion.py`` as its README runs it: 3000 steps, batch 1 with 4 accumulated
#: gradients, learning rate 5e-4 multiplied by ``--scale_lr`` by 4 × 1 × 1 GPU = 2e-3, constant).
#: A batch of 4 here averages the loss over 4 images as those 4 accumulated batches of 1 do.
TEXTUAL_INVERSION_PRESETS = {
    "quick": TextualInversionConfig(),
    "gpu": TextualInversionConfig(steps=3000, learning_rate=2e-3, batch_size=4),
}


@dataclass(frozen=True)
class LearnedToken:
    """The result of ``learn_token``.

    Attributes:
        placeholder: the token string to write in prompts.
        embedding: (D,) float32 on the CPU, D the text encoder's hidden size.
        losses: the denoising loss of each training step (for diagnostics and plots).
        config: how it was learned (None for a token made by hand).
    """

    placeholder: str
    embedding: torch.Tensor
    losses: tuple[float, ...] = ()
    config: TextualInversionConfig | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{placeholder: embedding}`` as a safetensors file at ``path``.

        diffusers' ``load_textual_inversion`` reads the file.
        """
        save_file({self.placeholder: self.embedding.contiguous()}, str(path))


class _EmbeddingWithNewToken(nn.Module):
    """The text encoder's token table, plus one trainable vector for one token id.

    The table is used as is (not copied, not trained); the new vector is float32 whatever the
    model's dtype, so that AdamW updates are not lost to half precision.
    """

    def __init__(self, table: nn.Embedding, token_id: int, initial: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.token_id = token_id
        self.vector = nn.Parameter(initial.detach().to(table.weight.device, torch.float32).clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Ids past the table (a tokenizer larger than the table) exist only for the new token.
        rows = self.table(input_ids.clamp(max=self.table.num_embeddings - 1))
        is_new = (input_ids == self.token_id).unsqueeze(-1)
        return torch.where(is_new, self.vector.to(rows.dtype), rows)


@dataclass(frozen=True)
class InstalledToken:
    """What ``installed_token`` hands out.

    Attributes:
        tokenizer: a copy of the model's tokenizer that knows the placeholder.
        vector: the placeholder's embedding (D,), float32, a trainable parameter.
    """

    tokenizer: PreTrainedTokenizerBase
    vector: nn.Parameter

    def embed(self, model: LatentDiffusion, prompts: list[str]) -> PromptEmbeddings:
        """Prompts → text-encoder hidden states (B, L, D), differentiable in ``vector``."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        states = model.text_encoder(tokens.input_ids.to(model.device))[0]
        return PromptEmbeddings(states.to(model.dtype))


@contextlib.contextmanager
def installed_token(
    model: LatentDiffusion, placeholder: str, embedding: torch.Tensor
) -> Iterator[InstalledToken]:
    """Make ``placeholder`` a word of ``model`` inside the block, ``embedding`` (D,) its row.

    Inside, prompts must go through the yielded tokenizer (``model.tokenizer`` and ``model.embed``
    do not know the word). On exit, however the block ends, the text encoder gets its original
    input-embedding module back; the shared tokenizer is never touched.

    Raises:
        ValueError: the placeholder is already a word of the tokenizer, or does not tokenize to
            exactly one token, or ``embedding`` has the wrong size.
    """
    text_encoder = model.text_encoder
    table = text_encoder.get_input_embeddings()
    if tuple(embedding.shape) != (table.embedding_dim,):
        raise ValueError(
            f"embedding must have shape ({table.embedding_dim},) to match the text encoder, "
            f"got {tuple(embedding.shape)}"
        )
    if placeholder in model.tokenizer.get_vocab():
        raise ValueError(f"placeholder {placeholder!r} is already in the vocabulary; pick another")
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.add_tokens([placeholder])
    token_ids = tokenizer(placeholder, add_special_tokens=False).input_ids
    if len(token_ids) != 1:
        raise ValueError(f"placeholder {placeholder!r} did not become one token: {token_ids}")

    extended = _EmbeddingWithNewToken(table, token_ids[0], embedding)
    text_encoder.set_input_embeddings(extended)
    try:
        yield InstalledToken(tokenizer=tokenizer, vector=extended.vector)
    finally:
        text_encoder.set_input_embeddings(table)


def initializer_embedding(model: LatentDiffusion, initializer: str) -> torch.Tensor:
    """The starting vector (D,) float32: the initializer word's row, or its tokens' mean.

    The original method requires a one-token initializer; tokenizers that split the word (e.g.
    test models' character-level ones) get the mean, which is the nearest one-vector summary.
    """
    token_ids = model.tokenizer(initializer, add_special_tokens=False).input_ids
    if not token_ids:
        raise ValueError(f"initializer {initializer!r} has no tokens")
    if len(token_ids) > 1:
        logger.info(
            "initializer %r is %d tokens; starting from their mean", initializer, len(token_ids)
        )
    table = model.text_encoder.get_input_embeddings().weight
    return table[torch.tensor(token_ids, device=table.device)].detach().float().mean(0)


def learn_token(
    model: LatentDiffusion,
    images: torch.Tensor,
    config: TextualInversionConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> LearnedToken:
    """Learn the embedding of ``config.placeholder`` from ``images``; the model is left unchanged.

    Each step draws ``batch_size`` images and one template each, a timestep t ~ U{0..T−1}, noise
    and a posterior sample of each latent, and takes an AdamW step on the denoising loss (against
    the model's own target, ε or v) with respect to the new vector only.

    Args:
        model: the loaded model; frozen throughout, its state restored afterwards.
        images: (N, 3, H, W) float in [0, 1], N >= 1, one size (edge-padded to the VAE's multiple).
        config: placeholder, initializer, steps, learning rate, batch size, templates
            (``TextualInversionConfig()`` when None).
        generator: the only randomness; same seed → same embedding.
        callback: called after each step with (step, steps, loss).

    Returns:
        The placeholder, its learned (D,) embedding, the loss of each step and ``config``.
    """
    # 1. Check the inputs; the images are fixed, so move them once.
    config = TextualInversionConfig() if config is None else config
    check_images(images)
    padded = pad_to_multiple(images.detach().float(), model.size_multiple).to(model.device)
    losses: list[float] = []

    with model.frozen():
        # 2. Install the placeholder with its initial vector; only that vector is optimised.
        initial = initializer_embedding(model, config.initializer)
        with installed_token(model, config.placeholder, initial) as token:
            optimizer = torch.optim.AdamW([token.vector], lr=config.learning_rate)
            for step in range(1, config.steps + 1):
                # 3. A minibatch, its prompts and this step's randomness.
                size = (config.batch_size,)
                picks = randint(0, len(padded), size, generator, device=model.device)
                templates = randint(0, len(config.templates), size, generator).tolist()
                batch = padded[picks]
                prompts = [config.templates[i].format(config.placeholder) for i in templates]
                noise = StepNoise.draw(model, batch, generator)

                # 4. Denoising loss through the frozen networks, one AdamW step on the vector.
                with torch.no_grad():
                    latents = model.encode(batch, noise.posterior_noise)
                loss = denoising_loss(model, latents, token.embed(model, prompts), noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if callback is not None:
                    callback(step, config.steps, losses[-1])
            learned = token.vector.detach().cpu().clone()

    return LearnedToken(config.placeholder, learned, tuple(losses), config)


def generate(
    model: LatentDiffusion,
    token: LearnedToken,
    *,
    prompt: str = "a painting in the style of {}",
    num_images: int = 4,
    height: int = 512,
    width: int = 512,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate ``num_images`` images from ``prompt`` with the learned token in place of "{}".

    Text-to-image DDIM with classifier-free guidance (the empty prompt as unconditional). The
    pipeline needs sizes divisible by 8; other sizes are generated rounded up and cropped.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    if "{}" not in prompt:
        raise ValueError(f"prompt must contain '{{}}' where the learned token goes, got {prompt!r}")
    # The token is installed only for the pipeline call, with a pipeline over the same parts.
    with model.frozen(), installed_token(model, token.placeholder, token.embedding) as installed:
        return text_to_image(
            model,
            prompt.format(token.placeholder),
            num_images=num_images,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            tokenizer=installed.tokenizer,
        )


def textual_inversion(
    model: LatentDiffusion,
    images: torch.Tensor,
    *,
    config: TextualInversionConfig | None = None,
    prompt: str = "a painting in the style of {}",
    num_images: int = 4,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    callback: TrainingCallback | None = None,
) -> tuple[torch.Tensor, LearnedToken]:
    """Learn a token from ``images`` and generate ``num_images`` with it, at the images' size.

    Args:
        model: the loaded model; its tokenizer and text encoder are exactly as before afterwards.
        images: (N, 3, H, W) float in [0, 1]. Not modified.
        config: how the token is learned (``TextualInversionConfig()`` when None).
        prompt: generation prompt with "{}" for the token.
        num_images: how many images to generate.
        num_inference_steps: DDIM steps of the generation.
        guidance_scale: classifier-free guidance weight of the generation (1 disables it).
        generator: the only randomness, used by learning then generation.
        callback: training progress, (step, steps, loss).

    Returns:
        The generated images (num_images, 3, H, W) in [0, 1] on ``images``' device and in their
        dtype, and the learned token.
    """
    token = learn_token(model, images, config, generator=generator, callback=callback)
    generated = generate(
        model,
        token,
        prompt=prompt,
        num_images=num_images,
        height=images.shape[-2],
        width=images.shape[-1],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    return generated.to(images.device, images.dtype), token
