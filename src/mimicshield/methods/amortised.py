"""Amortised protection, one forward pass: a network trained against one model outputs δ.

Instead of optimising each image (PGD, 100 encoder passes), a small perturbation network is
trained once against a surrogate model to maximise the protection objective over many images,
then protects any image in one pass (FastProtect, CVPR 2025, reports 0.04 s per 512² image on an
A100 and 2.9 s on a CPU). The trained network is loaded from ``protector``: the bundled
``protector-mini`` (trained against the miniature ``mini`` only), a folder written by
``python -m training.protector`` or a hub id.

What PGD's settings mean here:

- ε (``budget.eps``): the network outputs ε·tanh(h), so the budget holds by construction. An ε
  other than the one the network was trained for *scales* its perturbation pattern (same h);
  the record states both. Scaling, not refusing: PGD's sign steps also end near the corners of
  the ε-ball, so the trained pattern is the natural guess at another radius, and the web page's
  presets (8, 16, 24/255) stay usable; retrain for the best result at another ε.
- ``budget.steps``: 0 leaves the images unchanged, like every method; any other count means the
  one forward pass, so the budget is normalised to steps = 1 and step size 0.
- ``prompt``, ``random_start``, ``noise_samples``: PGD settings, not used (the prompt and the
  noise draws were fixed during training); the record leaves them out.
- The output does not depend on the seed: the network is deterministic.

A protector is tied to its surrogate: its perturbation is shaped for that model's encoder and is
no better than noise against another. ``check_model`` therefore *refuses* a model whose
configuration differs from the one the protector records (a warning would let the run finish
and write files that look protected and are not).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ..budget import Budget
from ..models.ensemble import Ensemble, single_model_message
from ..models.protector import DEFAULT_PROTECTOR, PerturbationNetwork, load_protector
from ..objectives import ObjectiveWeights
from .base import ProtectionMethod

if TYPE_CHECKING:
    from ..models.ensemble import Surrogate


class ProtectorMismatchError(ValueError):
    """The protector was trained against another model than the one given."""


@dataclass(frozen=True)
class Amortised(ProtectionMethod):
    """Amortised protection: δ = ε·tanh(h(x)) from a network trained against one surrogate.

    Attributes:
        protector: ``protector-mini`` (bundled, trained against ``mini``), a folder or a hub id.
    """

    name = "amortised"
    paper = "amortised perturbation network, as in FastProtect (CVPR 2025)"

    protector: str = DEFAULT_PROTECTOR

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "protector", str(self.protector))  # a Path is welcome too
        # One pass, no step size: see the module docstring. steps = 0 stays the identity.
        one_pass = Budget(eps=self.budget.eps, step_size=0.0, steps=min(self.budget.steps, 1))
        object.__setattr__(self, "budget", one_pass)

    @cached_property
    def network(self) -> PerturbationNetwork:
        """The trained network, loaded once per method object (float32, CPU, eval mode).

        Raises:
            ModelUnavailableError: no protector at ``protector``, in one sentence.
        """
        return load_protector(self.protector)

    def weights(self) -> ObjectiveWeights:
        """Nothing is optimised at protection time: all weights zero (training is elsewhere)."""
        return ObjectiveWeights()

    def check_model(self, model: Surrogate) -> None:
        """Refuse an ensemble, or a model configured unlike the protector's surrogate.

        Raises:
            ProtectorMismatchError: with the command that trains a protector for ``model``; or
                ``model`` is an ensemble (a protector answers for the one model it was trained
                against).
        """
        if isinstance(model, Ensemble):
            raise ProtectorMismatchError(
                single_model_message("the amortised method", model)
                + "; its protector was trained against one model"
            )
        config = self.network.config
        if config.surrogate_digest != model.config_digest():
            raise ProtectorMismatchError(
                f"this protector was trained against {config.surrogate}, not {model.name}; "
                f"train one for {model.name} with "
                f"`python -m training.protector --model {model.name}` and pass its folder as "
                "the protector"
            )

    def as_record(self) -> dict[str, object]:
        """ε, the protector and what it was trained for (its weights by digest)."""
        config = self.network.config
        return {
            "method": self.name,
            **self.budget.as_record(),
            "protector": self.protector,
            "protector_sha256": _weights_sha256(self.network),
            "trained_against": config.surrogate,
            "trained_eps_255": config.eps_255,
            "trained_objective": config.objective,
            "objective_weights": dataclasses.asdict(self.weights()),
        }


def _weights_sha256(network: PerturbationNetwork) -> str:
    """SHA-256 over the network's tensors in order, so records tell protectors apart."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
