"""What LoRA and DreamBooth share: the denoising fine-tuning loop of diffusers' training examples.

Each step draws a minibatch of images (with replacement), a posterior sample of their latents, a
timestep t ~ U{0..T−1} and noise per image, and takes one AdamW step on the denoising loss against
the model's own target (ε, v or the flow velocity) with the gradient norm clipped at 1, as
``train_dreambooth.py`` and ``train_text_to_image_lora.py`` do (constant learning rate, torch's
AdamW defaults, which are the examples' β = (0.9, 0.999), weight decay 0.01, ε = 1e-8). With a
prior set, each step adds the same loss on a minibatch of class images, weighted (DreamBooth's
prior preservation). For the flow families the uniform timestep is the FLUX example's default;
the SD3 example draws σ from a logit-normal density instead (``--weighting_scheme``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import LatentDiffusion, PromptEmbeddings
from ..objectives import StepNoise, denoising_loss
from ..tensors import check_positive, pad_to_multiple, randint

#: Called after each training step with (step, steps, loss).
TrainingCallback = Callable[[int, int, float], None]

#: The examples' ``--max_grad_norm``: the gradient is rescaled to at most this L2 norm.
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainingSet:
    """Images and the one prompt they are trained under.

    Attributes:
        images: (N, 3, H, W) float32 in [0, 1] on the model's device, H and W multiples of the
            model's size multiple.
        embeddings: the prompt (a batch of one), encoded for the denoiser, no gradient.
    """

    images: torch.Tensor
    embeddings: PromptEmbeddings

    @classmethod
    def of(cls, model: LatentDiffusion, images: torch.Tensor, prompt: str) -> TrainingSet:
        """Edge-pad ``images`` (N, 3, H, W) in [0, 1] to the size multiple; embed ``prompt``."""
        padded = pad_to_multiple(images.detach().float(), model.size_multiple)
        return cls(padded.to(model.device), model.embed([prompt]))


def minibatch_loss(
    model: LatentDiffusion,
    training: TrainingSet,
    batch_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The denoising loss of ``batch_size`` images drawn from ``training``, a scalar.

    Draw order: image indices, then ``StepNoise.draw``'s timesteps, noise and posterior noise.
    The VAE runs without gradient; the loss is differentiable in the denoiser's trainable weights.
    """
    picks = randint(0, len(training.images), (batch_size,), generator, device=model.device)
    batch = training.images[picks]
    noise = StepNoise.draw(model, batch, generator)
    with torch.no_grad():
        latents = model.encode(batch, noise.posterior_noise)
    embeddings = training.embeddings.expand(batch_size)
    return denoising_loss(model, latents, embeddings, noise)


def fine_tune(
    model: LatentDiffusion,
    parameters: list[torch.nn.Parameter],
    instances: TrainingSet,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator | None,
    prior: TrainingSet | None = None,
    prior_loss_weight: float = 1.0,
    callback: TrainingCallback | None = None,
) -> tuple[float, ...]:
    """Train ``parameters`` (those of ``model``'s denoiser that should move) for ``steps`` steps.

    Args:
        model: the model whose denoiser (UNet or transformer) holds ``parameters``; call inside
            ``model.frozen()`` so that nothing else gets a gradient.
        parameters: the trainable tensors, in float32 (AdamW updates of 1e-4 and below vanish in
            half precision).
        instances: the images to learn and their prompt.
        steps: optimisation steps.
        batch_size: instance images per step (and class images per step, with a prior).
        learning_rate: AdamW's constant step size.
        generator: the only randomness; same seed → same weights.
        prior: class images and their prompt (DreamBooth's prior preservation), or None.
        prior_loss_weight: weight of the class images' loss.
        callback: called after each step with (step, steps, total loss).

    Returns:
        The total loss of each step.
    """
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    losses = []
    for step in range(1, steps + 1):
        loss = minibatch_loss(model, instances, batch_size, generator)
        if prior is not None:
            loss = loss + prior_loss_weight * minibatch_loss(model, prior, batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, steps, losses[-1])
    return tuple(losses)


def check_training(steps: int, batch_size: int, learning_rate: float) -> None:
    """Raise ValueError unless steps and batch size are whole numbers ≥ 1 and the rate is > 0."""
    check_positive(steps, "steps")
    check_positive(batch_size, "batch_size")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
