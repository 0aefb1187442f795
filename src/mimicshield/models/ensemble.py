"""Several models protected against at once: an ``Ensemble`` of weighted members.

A perturbation optimised against one surrogate transfers poorly to a model of another family
(an SD 1.5 encoder attack is tuned to that VAE, not to FLUX's). Protecting against an ensemble
optimises the weighted mean of the members' objectives, so the perturbation has to work on all
of them at once: each member encodes the images itself (its own latents, prompt embeddings and
target latents) and draws its own step noise.

What an ensemble is *not*: a latent diffusion model. It has no single latent space, denoiser or
pipeline, so what needs one model (mimicry, metrics, the amortised method) refuses it with a
``ValueError`` that says to pass one member; protection (``protect``, tiling, the runtime) takes
it wherever it takes a model.

Members run one after another within a PGD step, each keeping only its own activations, and their
gradients add up in one image gradient (``protect``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce

import torch

from .base import LatentDiffusion


@dataclass(frozen=True)
class Member:
    """One model of an ensemble and its weight in the objective (normalised: weights sum to 1)."""

    model: LatentDiffusion
    weight: float


@dataclass(frozen=True, eq=False)
class Ensemble:
    """Models protected against together: objective = Σ_m w_m · objective_m, Σ w_m = 1.

    Build it from (model, weight) pairs, ``Ensemble.of(models, weights)`` or
    ``Ensemble.from_pretrained(names, weights)``. Weights must be finite and > 0; they are
    normalised to sum to 1, so (2, 1) means two thirds and one third. All members must live on
    one device in one precision (the memory plan and the record assume it); ``to`` moves them
    together.

    Attributes:
        members: the members in order; their step noise is drawn in this order from the run's
            one generator, so the same seed gives the same result.
    """

    members: tuple[Member, ...]

    def __init__(self, members: Iterable[Member | tuple[LatentDiffusion, float]]) -> None:
        pairs = [
            (item.model, item.weight) if isinstance(item, Member) else tuple(item)
            for item in members
        ]
        for model, _ in pairs:
            if not isinstance(model, LatentDiffusion):
                raise ValueError(
                    f"an ensemble's members are LatentDiffusion models, got {type(model).__name__}"
                )
        models = [model for model, _ in pairs]
        weights = normalised_weights([weight for _, weight in pairs], [m.name for m in models])
        members = tuple(Member(m, w) for m, w in zip(models, weights, strict=True))
        object.__setattr__(self, "members", members)
        _check_together(self.models)

    # ---------------------------------------------------------------- building

    @classmethod
    def of(
        cls, models: Sequence[LatentDiffusion], weights: Sequence[float] | None = None
    ) -> Ensemble:
        """Models with the given weights (default: equal).

        Raises:
            ValueError: a different number of weights than models, or a weight that is not
                finite and > 0.
        """
        if weights is None:
            weights = [1.0] * len(models)
        normalised_weights(weights, [model.name for model in models])  # the count, by name
        return cls(zip(models, weights, strict=True))

    @classmethod
    def from_pretrained(
        cls,
        names: Sequence[str | os.PathLike],
        weights: Sequence[float] | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "fp32",
        config: str | os.PathLike | None = None,
    ) -> Ensemble:
        """Load each model (``load_model``: any family, folder, hub id or single file).

        Args:
            names: what each member is loaded from, in member order.
            weights: one per name, each > 0 (default: equal).
            device: as for ``LatentDiffusion.from_pretrained``; every member goes there.
            dtype: as for ``LatentDiffusion.from_pretrained``; every member gets it.
            config: for single-file members: the diffusers configuration of their architecture.

        Raises:
            ValueError: weights that do not fit the names (checked before anything is loaded).
            ModelUnavailableError: a member cannot be loaded.
        """
        from .loading import load_model

        if weights is not None:
            # Checked first: loading several full-size models only to refuse the weights would
            # waste minutes.
            normalised_weights(weights, [str(name) for name in names])
        models = [load_model(name, device=device, dtype=dtype, config=config) for name in names]
        return cls.of(models, weights)

    # -------------------------------------------------------------- properties

    @property
    def models(self) -> tuple[LatentDiffusion, ...]:
        """The members' models, in order."""
        return tuple(member.model for member in self.members)

    @property
    def weights(self) -> tuple[float, ...]:
        """The normalised weights, in order (they sum to 1)."""
        return tuple(member.weight for member in self.members)

    @property
    def name(self) -> str:
        """Members and weights, e.g. "tiny×0.5 + tiny-sd3×0.5" (records, resume fingerprints)."""
        return " + ".join(f"{member.model.name}×{member.weight:.6g}" for member in self.members)

    @property
    def family(self) -> str:
        """Always "ensemble" (each member's own family is in ``describe``)."""
        return "ensemble"

    @property
    def random_weights(self) -> bool:
        """True when any member has random weights."""
        return any(model.random_weights for model in self.models)

    @property
    def device(self) -> torch.device:
        """The device every member lives on."""
        return self.models[0].device

    @property
    def dtype(self) -> torch.dtype:
        """The precision every member's networks share."""
        return self.models[0].dtype

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        """Every member's torch modules (a module shared by two members counted once)."""
        unique = {id(network): network for model in self.models for network in model.networks}
        return tuple(unique.values())

    @property
    def size_multiple(self) -> int:
        """What image sides must divide by: the least common multiple of the members' own."""
        return reduce(math.lcm, (model.size_multiple for model in self.models))

    @property
    def native_resolution(self) -> int:
        """The largest member's native side, so no member sees the image below its own."""
        return max(model.native_resolution for model in self.models)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    # ------------------------------------------------------------------ state

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Ensemble:
        """Move every member (in place) and return self."""
        for model in self.models:
            model.to(device, dtype)
        return self

    def clear_caches(self) -> None:
        """Forget every member's cached prompt embeddings."""
        for model in self.models:
            model.clear_caches()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Ensemble]:
        """Every member frozen inside (``LatentDiffusion.frozen``), each restored after."""
        with contextlib.ExitStack() as stack:
            for model in self.models:
                stack.enter_context(model.frozen())
            yield self

    def describe(self) -> dict[str, object]:
        """Facts for provenance records: the ensemble, then each member with its weight."""
        return {
            "name": self.name,
            "family": self.family,
            "random_weights": self.random_weights,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "members": [
                {**member.model.describe(), "weight": member.weight} for member in self.members
            ],
        }

    # ----------------------------------------------- what needs a single model

    def __getattr__(self, name: str):
        """A single model's attribute (encode, pipeline, unet, ...) refused with a clear message.

        Only reached for names the ensemble does not have; private names and names no member
        has stay AttributeErrors (so copying, pickling and ``hasattr`` behave as usual).
        """
        models = [member.model for member in self.__dict__.get("members", ())]
        if not name.startswith("_") and any(
            hasattr(type(model), name) or name in vars(model) for model in models
        ):
            raise ValueError(single_model_message(f"'{name}'", self))
        raise AttributeError(f"'Ensemble' object has no attribute '{name}'")


#: What protection runs against: one model, or an ensemble of them.
Surrogate = LatentDiffusion | Ensemble


def members_of(surrogate: Surrogate) -> tuple[Member, ...]:
    """The members of an ensemble, or a single model as the one member of weight 1."""
    if isinstance(surrogate, Ensemble):
        return surrogate.members
    return (Member(surrogate, 1.0),)


def single_model_message(what: str, ensemble: Ensemble) -> str:
    """The sentence that refuses an ensemble where ``what`` needs one model."""
    names = ", ".join(repr(model.name) for model in ensemble.models)
    return (
        f"{what} needs one model, not an ensemble ({names}): only protection optimises against "
        "several models at once; pass one member instead (ensemble.models[i])"
    )


def check_single_model(model: Surrogate, what: str) -> None:
    """Raise ValueError if ``model`` is an ensemble where ``what`` needs one model."""
    if isinstance(model, Ensemble):
        raise ValueError(single_model_message(what, model))


def normalised_weights(weights: Sequence[float], names: Sequence[str]) -> tuple[float, ...]:
    """Weights checked (one per name, each finite and > 0) and scaled to sum to 1.

    Raises:
        ValueError: naming the count, or the model and the weight that is wrong.
    """
    weights = list(weights)
    if not names:
        raise ValueError("an ensemble needs at least one model, got none")
    if len(weights) != len(names):
        raise ValueError(
            f"an ensemble needs one weight per model: {len(names)} models "
            f"({', '.join(map(str, names))}), {len(weights)} weights "
            f"({', '.join(map(str, weights))})"
        )
    checked = [_check_weight(weight, name) for weight, name in zip(weights, names, strict=True)]
    total = math.fsum(checked)
    return tuple(weight / total for weight in checked)


def _check_weight(weight: object, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"the weight of {name!r} must be a number > 0, got {weight!r}")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"the weight of {name!r} must be finite and > 0, got {weight!r}")
    return float(weight)


def _check_together(models: tuple[LatentDiffusion, ...]) -> None:
    """All members on one device, in one precision."""
    for what in ("device", "dtype"):
        values = {str(getattr(model, what)) for model in models}
        if len(values) > 1:
            listed = ", ".join(f"{model.name}: {getattr(model, what)}" for model in models)
            raise ValueError(
                f"an ensemble's models must share one {what}, got {listed}; move them with "
                "model.to(device, dtype) first"
            )
