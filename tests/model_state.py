"""Checks that fine-tuning leaves a shared model exactly as it found it, for every family."""

from __future__ import annotations

import torch

from mimicshield.mimicry.lora import INSTANCE_PROMPT
from mimicshield.objectives import StepNoise, denoising_loss


def snapshot(model) -> dict:
    """Every network's weights, module tree, modes, gradient flags and attributes; vocabularies.

    Take it after the model has run once (``test_finetune_families._used``) where the libraries
    set attributes on first use.
    """
    networks = {name: getattr(model, name) for name in model.network_names}
    state = {
        name: {
            "weights": {key: value.clone() for key, value in net.state_dict().items()},
            "modules": [(key, type(module)) for key, module in net.named_modules()],
            "training": [module.training for module in net.modules()],
            "requires_grad": [p.requires_grad for p in net.parameters()],
            "attributes": set(vars(net)),
        }
        for name, net in networks.items()
        if net is not None
    }
    tokenizers = [name for name in model.part_names if name.startswith("tokenizer")]
    state["vocabularies"] = {
        name: dict(getattr(model, name).get_vocab())
        for name in tokenizers
        if getattr(model, name) is not None
    }
    return state


def assert_bit_exact(model, before: dict) -> None:
    """The model's ``snapshot`` equals ``before``, weight for weight."""
    after = snapshot(model)
    assert after.keys() == before.keys()
    assert after.pop("vocabularies") == before["vocabularies"]
    for name, state in after.items():
        assert state["weights"].keys() == before[name]["weights"].keys(), name
        for key, value in state["weights"].items():
            assert torch.equal(value, before[name]["weights"][key]), f"{name}.{key} changed"
        for part in ("modules", "training", "requires_grad", "attributes"):
            assert state[part] == before[name][part], f"{name} {part} changed"


def held_out_loss(model, images, embeddings=None, seed=123, draws=8) -> float:
    """The denoising loss of the instance prompt (or ``embeddings``) on fixed draws."""
    generator = torch.Generator().manual_seed(seed)
    if embeddings is None:
        embeddings = model.embed([INSTANCE_PROMPT])
    with torch.no_grad(), model.frozen():
        noise = StepNoise.draw(model, images, generator, samples=draws)
        latents = model.encode(images, noise.posterior_noise)
        return denoising_loss(model, latents, embeddings.expand(len(images)), noise).item()
