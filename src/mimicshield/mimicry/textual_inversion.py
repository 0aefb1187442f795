"""Textual inversion: learn one new word embedding from a few images, then generate with it.

Gal et al., "An image is worth one word: personalizing text-to-image generation using textual
inversion", ICLR 2023. A placeholder token v* gets an embedding vector, initialised from a coarse
descriptor ("painting"); it is trained with the usual denoising loss on prompts such as
"a painting in the style of v*" while every network stays frozen, so the gradient reaches only
that one vector (through the UNet's cross-attention and the text encoder).

Families: where diffusers supports textual inversion (``load_textual_inversion``). SD 1.x/2.x has
one CLIP and the token one vector; SDXL reads the prompt with two CLIPs, so the token gets one
vector in each (768 and 1280 wide in the released model), trained jointly through the family's
own prompt encoding (both encoders' states and the pooled vector, as the pipelines compute them).
SD3 and FLUX have no textual inversion in diffusers (their T5 reads the prompt too): learning a
style there is LoRA's job, and ``learn_token`` says so.

The shared tokenizers and text encoders are never modified: ``installed_token`` hands out
extended *copies* of the tokenizers and swaps each text encoder's input-embedding module for one
that adds the new row, only inside a ``with`` block; afterwards the original modules are back in
place, so vocabulary, weights, flags and modes are exactly what they were.

Settings: ``TextualInversionConfig()`` is quick (500 steps of one image: seconds on the tiny test
model, what ``mimicshield evaluate`` runs); ``TEXTUAL_INVERSION_PRESETS["gpu"]`` is diffusers'
``textual_inversion.py`` example for real models.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
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

#: The families with textual inversion in diffusers → their (tokenizer, text encoder) part
#: pairs, each of which gets the token (SDXL: in both, as its ``load_textual_inversion`` is used).
TOKEN_ENCODERS = {
    "sd": (("tokenizer", "text_encoder"),),
    "sdxl": (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
}
#: The keys of a saved SDXL token: the layout of SDXL embedding files (CLIP-L's, CLIP-G's).
SDXL_FILE_KEYS = ("clip_l", "clip_g")

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
        embeddings: one (D,) float32 vector on the CPU per text encoder of the family
            (``TOKEN_ENCODERS``), D that encoder's hidden size.
        losses: the denoising loss of each training step (for diagnostics and plots).
        config: how it was learned (None for a token made by hand).
    """

    placeholder: str
    embeddings: tuple[torch.Tensor, ...]
    losses: tuple[float, ...] = ()
    config: TextualInversionConfig | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write the token as a safetensors file at ``path``, as diffusers reads it.

        One vector (SD 1.x/2.x): ``{placeholder: (D,)}``, which ``load_textual_inversion(path)``
        reads. Two (SDXL): ``{"clip_l": (1, D₁), "clip_g": (1, D₂)}``, the layout of SDXL
        embedding files; load each half with ``load_textual_inversion(tensors[key],
        token=placeholder, text_encoder=…, tokenizer=…)`` for the first and the second encoder.
        """
        if len(self.embeddings) == 1:
            tensors = {self.placeholder: self.embeddings[0]}
        else:
            tensors = {key: e[None] for key, e in zip(SDXL_FILE_KEYS, self.embeddings, strict=True)}
        save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, str(path))


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
        tokenizers: tokenizer part name → a copy of that tokenizer that knows the placeholder.
        vectors: the placeholder's embedding in each text encoder, (D,) float32, trainable.
    """

    tokenizers: dict[str, PreTrainedTokenizerBase]
    vectors: tuple[nn.Parameter, ...]

    def embed(self, model: LatentDiffusion, prompts: list[str]) -> PromptEmbeddings:
        """Prompts → the denoiser's text condition, differentiable in ``vectors``.

        Encoded afresh (never from the model's cache), the family's own way.
        """
        embeddings = model.with_parts(**self.tokenizers).encode_prompts(prompts)
        return embeddings.to(model.device, model.dtype)


def token_encoders(model: LatentDiffusion) -> tuple[tuple[str, str], ...]:
    """The (tokenizer, text encoder) part names that get the token (``TOKEN_ENCODERS``).

    Raises:
        ValueError: the family has no textual inversion (SD3, FLUX); the message suggests LoRA.
    """
    if model.family not in TOKEN_ENCODERS:
        raise ValueError(
            f"textual inversion is not available for '{model.name}' ({model.family}): diffusers "
            f"supports it for SD 1.x/2.x and SDXL only; use LoRA (train_lora, 'mimicshield mimic "
            f"lora', the 'lora' scenario) to learn a style with a {model.family} model"
        )
    return TOKEN_ENCODERS[model.family]


@contextlib.contextmanager
def installed_token(
    model: LatentDiffusion, placeholder: str, embeddings: Sequence[torch.Tensor]
) -> Iterator[InstalledToken]:
    """Make ``placeholder`` a word of ``model`` inside the block, with one row per text encoder.

    Inside, prompts must go through the yielded tokenizers (``InstalledToken.embed``, or the
    pipelines given them; ``model.embed`` does not know the word). On exit, however the block
    ends, each text encoder gets its original input-embedding module back; the shared tokenizers
    are never touched.

    Args:
        model: an SD 1.x/2.x or SDXL model.
        placeholder: the new word.
        embeddings: its vector (D,) in each text encoder of ``token_encoders(model)``, in order.

    Raises:
        ValueError: the family has no textual inversion, the placeholder is already a word of a
            tokenizer or does not tokenize to exactly one token, or the embeddings do not match
            the encoders in number or size.
    """
    pairs = token_encoders(model)
    if len(embeddings) != len(pairs):
        raise ValueError(
            f"{model.family} needs {len(pairs)} embeddings (one per text encoder), "
            f"got {len(embeddings)}"
        )
    tokenizers, swaps = {}, []
    for (tokenizer_name, encoder_name), embedding in zip(pairs, embeddings, strict=True):
        tokenizer, text_encoder = getattr(model, tokenizer_name), getattr(model, encoder_name)
        table = text_encoder.get_input_embeddings()
        if tuple(embedding.shape) != (table.embedding_dim,):
            raise ValueError(
                f"embedding must have shape ({table.embedding_dim},) to match {encoder_name}, "
                f"got {tuple(embedding.shape)}"
            )
        if placeholder in tokenizer.get_vocab():
            raise ValueError(
                f"placeholder {placeholder!r} is already in the vocabulary of {tokenizer_name}; "
                "pick another"
            )
        extended_tokenizer = copy.deepcopy(tokenizer)
        extended_tokenizer.add_tokens([placeholder])
        token_ids = extended_tokenizer(placeholder, add_special_tokens=False).input_ids
        if len(token_ids) != 1:
            raise ValueError(f"placeholder {placeholder!r} did not become one token: {token_ids}")
        tokenizers[tokenizer_name] = extended_tokenizer
        swaps.append((text_encoder, table, _EmbeddingWithNewToken(table, token_ids[0], embedding)))

    for text_encoder, _, extended in swaps:
        text_encoder.set_input_embeddings(extended)
    try:
        vectors = tuple(extended.vector for _, _, extended in swaps)
        yield InstalledToken(tokenizers=tokenizers, vectors=vectors)
    finally:
        for text_encoder, table, _ in swaps:
            text_encoder.set_input_embeddings(table)


def initializer_embeddings(model: LatentDiffusion, initializer: str) -> tuple[torch.Tensor, ...]:
    """The starting vectors, (D,) float32 per text encoder: the initializer word's row in each.

    The original method requires a one-token initializer; tokenizers that split the word (e.g.
    test models' character-level ones) get the mean of its tokens' rows, which is the nearest
    one-vector summary.

    Raises:
        ValueError: the family has no textual inversion, or the word has no tokens.
    """
    vectors = []
    for tokenizer_name, encoder_name in token_encoders(model):
        token_ids = getattr(model, tokenizer_name)(initializer, add_special_tokens=False).input_ids
        if not token_ids:
            raise ValueError(f"initializer {initializer!r} has no tokens")
        if len(token_ids) > 1:
            logger.info(
                "initializer %r is %d tokens; starting from their mean", initializer, len(token_ids)
            )
        table = getattr(model, encoder_name).get_input_embeddings().weight
        rows = table[torch.tensor(token_ids, device=table.device)]
        vectors.append(rows.detach().float().mean(0))
    return tuple(vectors)


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
    the model's own target, ε or v) with respect to the new vectors only (one per text encoder).

    Args:
        model: the loaded model, SD 1.x/2.x or SDXL; frozen throughout, its state restored
            afterwards.
        images: (N, 3, H, W) float in [0, 1], N >= 1, one size (edge-padded to the VAE's multiple).
        config: placeholder, initializer, steps, learning rate, batch size, templates
            (``TextualInversionConfig()`` when None).
        generator: the only randomness; same seed → same embedding.
        callback: called after each step with (step, steps, loss).

    Returns:
        The placeholder, its learned (D,) embedding per text encoder, the loss of each step and
        ``config``.

    Raises:
        ValueError: the family has no textual inversion (SD3, FLUX: use LoRA), or a bad input.
    """
    # 1. Check the inputs; the images are fixed, so move them once.
    config = TextualInversionConfig() if config is None else config
    token_encoders(model)
    check_images(images)
    padded = pad_to_multiple(images.detach().float(), model.size_multiple).to(model.device)
    losses: list[float] = []

    with model.frozen():
        # 2. Install the placeholder with its initial vectors; only they are optimised.
        initial = initializer_embeddings(model, config.initializer)
        with installed_token(model, config.placeholder, initial) as token:
            optimizer = torch.optim.AdamW(token.vectors, lr=config.learning_rate)
            for step in range(1, config.steps + 1):
                # 3. A minibatch, its prompts and this step's randomness.
                size = (config.batch_size,)
                picks = randint(0, len(padded), size, generator, device=model.device)
                templates = randint(0, len(config.templates), size, generator).tolist()
                batch = padded[picks]
                prompts = [config.templates[i].format(config.placeholder) for i in templates]
                noise = StepNoise.draw(model, batch, generator)

                # 4. Denoising loss through the frozen networks, one AdamW step on the vectors.
                with torch.no_grad():
                    latents = model.encode(batch, noise.posterior_noise)
                loss = denoising_loss(model, latents, token.embed(model, prompts), noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if callback is not None:
                    callback(step, config.steps, losses[-1])
            learned = tuple(vector.detach().cpu().clone() for vector in token.vectors)

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

    The family's text-to-image pipeline (DDIM) with classifier-free guidance (the empty prompt as
    unconditional), given the extended tokenizers. The pipelines need sizes divisible by 8; other
    sizes are generated rounded up and cropped.

    Returns:
        (num_images, 3, height, width) float32 in [0, 1] on the model's device.
    """
    if "{}" not in prompt:
        raise ValueError(f"prompt must contain '{{}}' where the learned token goes, got {prompt!r}")
    # The token is installed only for the pipeline call, with a pipeline over the same parts.
    with model.frozen(), installed_token(model, token.placeholder, token.embeddings) as installed:
        return text_to_image(
            model,
            prompt.format(token.placeholder),
            num_images=num_images,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            **installed.tokenizers,
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
        model: the loaded model, SD 1.x/2.x or SDXL; its tokenizers and text encoders are
            exactly as before afterwards.
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
