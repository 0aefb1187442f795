"""The stages of the recipe by name, and the settings they run with."""

from collections.abc import Callable
from dataclasses import dataclass, field

from . import data, evaluate, export, paths, prepare, sources, tokenizer, unet, vae
from .evaluate import Settings as EvaluateSettings
from .unet import Settings as UnetSettings
from .vae import Settings as VaeSettings


@dataclass(frozen=True)
class Recipe:
    """Where a run reads and writes and how it trains; the defaults make the shipped model."""

    folders: paths.Folders = field(default_factory=paths.Folders)
    vae: VaeSettings = field(default_factory=VaeSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)


def _tokenizer(recipe: Recipe) -> None:
    tokenizer.build(data.Crops(recipe.folders).captions, recipe.folders.tokenizer)


# In running order; each stage skips work already done, and training resumes from its checkpoint.
STAGES: dict[str, Callable[[Recipe], object]] = {
    "sources": lambda recipe: sources.fetch_packages(recipe.folders),
    "prepare": lambda recipe: prepare.prepare(recipe.folders),
    "tokenizer": _tokenizer,
    "vae": lambda recipe: vae.train(recipe.folders, recipe.vae),
    "latents": lambda recipe: unet.encode_latents(recipe.folders),
    "unet": lambda recipe: unet.train(recipe.folders, recipe.unet),
    "export": lambda recipe: export.export(recipe.folders),
    "evaluate": lambda recipe: evaluate.evaluate(recipe.folders, recipe.evaluate),
}


def run(stage: str, recipe: Recipe = Recipe()) -> None:
    """Run one stage (a key of ``STAGES``)."""
    STAGES[stage](recipe)
