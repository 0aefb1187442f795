"""What protection optimises: four loss primitives and their weighted sum (DESIGN §3).

- ``denoising_loss`` L_S = mean((ε_θ(z_t, t, c) − target)²), gradient through UNet and encoder.
- ``latent_distance`` L_T = ‖z(x) − z(y)‖², summed, gradient through the encoder only.
- ``score_distillation``: a scalar whose gradient w.r.t. z is (ε̂ − ε) with ε̂ taken under
  no_grad, so w.r.t. the image it is the encoder's vector-Jacobian product J_Eᵀ(ε̂ − ε): one UNet
  forward, no UNet backward (Poole et al. 2022; Xue et al. 2024).
- ``posterior_collapse`` L_PCA = KL(q(z|x) ‖ N(0, v·I)) up to a constant: how far the encoder's
  posterior lies from a zero-mean Gaussian of variance v, gradient through the encoder only
  (Guo et al. 2024).

Each PGD step draws one ``StepNoise`` from the generator: a posterior noise for the encoding and
K ≥ 1 diffusion draws (timestep, noise). The objective encodes the images once and evaluates only
terms with non-zero weight; the UNet terms average over the K draws in one batched UNet call:
K > 1 lowers the variance of a step's gradient for K times the UNet work and no more encoder work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import LatentDiffusion, Posterior, PromptEmbeddings
from .tensors import check_positive, randint, randn


@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the primitives in the objective that PGD *maximises*.

    A positive weight ascends that term, a negative one descends it; zero skips its computation.
    """

    denoising: float = 0.0  # on L_S, the denoising (semantic) loss
    latent_distance: float = 0.0  # on L_T, the squared latent distance to the target
    score_distillation: float = 0.0  # on the SDS surrogate of L_S
    posterior_collapse: float = 0.0  # on L_PCA, the posterior's KL to N(0, v·I)
    posterior_variance: float = 1.0  # v of L_PCA (not a weight; used only with its term)

    def __post_init__(self) -> None:
        if not self.posterior_variance > 0:
            raise ValueError(f"posterior variance v must be > 0, got {self.posterior_variance!r}")


@dataclass(frozen=True)
class Conditioning:
    """What stays fixed over a protection run, computed once (no gradient).

    Attributes:
        embeddings: the prompts, encoded as the model's denoiser takes them.
        target_latents: (B, C, h, w) latents of the textural target, or None.
    """

    embeddings: PromptEmbeddings
    target_latents: torch.Tensor | None = None


@dataclass(frozen=True)
class StepNoise:
    """The randomness of one step: K draws of t ~ U{0..T−1} and ε ~ N(0, I), one posterior noise.

    The K diffusion draws are stacked along the batch, draw k holding rows k·B … (k+1)·B − 1, so
    the UNet sees them as one batch of K·B.
    """

    timesteps: torch.Tensor  # (K·B,) int64
    noise: torch.Tensor  # (K·B, C, h, w)
    posterior_noise: torch.Tensor  # (B, C, h, w)

    @property
    def samples(self) -> int:
        """K, the number of diffusion draws per image."""
        return self.timesteps.shape[0] // self.posterior_noise.shape[0]

    @classmethod
    def draw(
        cls,
        model: LatentDiffusion,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        samples: int = 1,
    ) -> StepNoise:
        """Draw on the generator's device (CPU by default): results do not depend on the model's.

        Order of the draws: K·B timesteps, K·B noise latents, then B posterior samples.
        """
        check_positive(samples, "noise samples")
        shape = model.latent_shape(images)
        stacked = (samples * shape[0], *shape[1:])
        device = model.device
        timesteps = randint(0, model.num_train_timesteps, stacked[:1], generator, device=device)
        noise = randn(stacked, generator, device=device)
        posterior_noise = randn(shape, generator, device=device)
        return cls(timesteps, noise, posterior_noise)


def _per_draw(tensor: torch.Tensor, samples: int) -> torch.Tensor:
    """Repeat a (B, ...) tensor K times along the batch to line up with the stacked draws."""
    return tensor.repeat(samples, *([1] * (tensor.dim() - 1)))


def denoising_loss(
    model: LatentDiffusion,
    latents: torch.Tensor,
    embeddings: PromptEmbeddings,
    step: StepNoise,
) -> torch.Tensor:
    """L_S: mean squared error of the denoiser's prediction against its own target (ε, v or ε − z).

    Averaged over the step's K draws as well as over elements and batch.
    """
    latents = _per_draw(latents, step.samples)
    embeddings = embeddings.repeat(step.samples)
    noisy = model.add_noise(latents, step.noise, step.timesteps)
    output = model.predict(noisy, step.timesteps, embeddings)
    target = model.target(latents, step.noise, step.timesteps)
    return (output.float() - target.float()).pow(2).mean()


def latent_distance(latents: torch.Tensor, target_latents: torch.Tensor) -> torch.Tensor:
    """L_T: squared L2 distance between latents, summed over all elements and the batch."""
    return (latents.float() - target_latents.float()).pow(2).sum()


def score_distillation(
    model: LatentDiffusion,
    latents: torch.Tensor,
    embeddings: PromptEmbeddings,
    step: StepNoise,
) -> torch.Tensor:
    """SDS surrogate ((ε̂ − ε).detach() · z).sum(): its gradient w.r.t. ``latents`` is ε̂ − ε.

    ε̂ is the denoiser's noise estimate in ε-form (``model.predicted_noise``: the output itself
    for ε-prediction, √ᾱ·(v̂ − v) + ε from v, z_t + (1 − σ)·v̂ from a flow velocity; see
    ``models/flow.py`` for the flow-matching derivation); with K draws the residual ε̂ − ε is
    their mean.
    """
    samples = step.samples
    with torch.no_grad():
        repeated = _per_draw(latents, samples)
        noisy = model.add_noise(repeated, step.noise, step.timesteps)
        output = model.predict(noisy, step.timesteps, embeddings.repeat(samples))
        residual = model.predicted_noise(output, noisy, step.timesteps) - step.noise.to(output)
        residual = residual.float().unflatten(0, (samples, -1)).mean(0)
    return (residual * latents.float()).sum()


def posterior_collapse(posterior: Posterior, variance: float) -> torch.Tensor:
    """L_PCA of Guo et al. 2024 (arXiv 2408.10901), summed over latent elements and the batch.

    L_PCA(x) = ½ Σᵢ (−ln σᵢ² − 1 + (μᵢ² + σᵢ²) / v), with μ and σ the encoder posterior's mean
    and standard deviation in the VAE's unscaled latent units: the KL divergence from
    q(z|x) = N(μ, σ²) to N(0, v·I) less its constant d·ln(v)/2 (the unified loss of the paper's
    method section, as written in the authors' README and ``loss.py``). Descending it with
    v = 1e-8 drives μ and σ to zero ("concentration collapse", PCA−); ascending it with v = 1
    spreads the posterior ("diffusion collapse", PCA+).

    Args:
        posterior: q(z|x) of a (B, 3, H, W) batch (``LatentDiffusion.posterior``).
        variance: v > 0.

    Returns:
        A float32 scalar.
    """
    mean, logvar, std = (part.float() for part in (posterior.mean, posterior.logvar, posterior.std))
    return 0.5 * (-logvar - 1 + (mean.square() + std.square()) / variance).sum()


def weighted_objective(
    model: LatentDiffusion,
    images: torch.Tensor,
    weights: ObjectiveWeights,
    conditioning: Conditioning,
    step: StepNoise,
) -> torch.Tensor:
    """Σ weight · term over the non-zero terms, from one encoding of ``images`` (B, 3, H, W)."""
    posterior = model.posterior(images)
    latents = posterior.latents(step.posterior_noise)
    value = torch.zeros((), device=latents.device)
    if weights.denoising:
        value = value + weights.denoising * denoising_loss(
            model, latents, conditioning.embeddings, step
        )
    if weights.latent_distance:
        if conditioning.target_latents is None:
            raise ValueError("this objective needs target latents, but none were given")
        value = value + weights.latent_distance * latent_distance(
            latents, conditioning.target_latents
        )
    if weights.score_distillation:
        value = value + weights.score_distillation * score_distillation(
            model, latents, conditioning.embeddings, step
        )
    if weights.posterior_collapse:
        value = value + weights.posterior_collapse * posterior_collapse(
            posterior, weights.posterior_variance
        )
    return value
