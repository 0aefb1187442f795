"""The stages of the recipe by name, and the settings they run with.

The data stages are the miniature's own (``training.mini``), run on this recipe's folders; the
``prepare`` stage is the protector's variant of the miniature's, which leaves out the 16 source
files above 40 megapixels (decoding the largest takes 12.5 GB of memory).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from training.mini import data, sources, tokenizer
from training.mini import unet as mini_unet
from training.mini import vae as mini_vae
from training.protector.data import prepare_crops

from . import evaluate, export, paths, transformer, vae
from .evaluate import Settings as EvaluateSettings
from .transformer import Settings as TransformerSettings
from .vae import Settings as VaeSettings


@dataclass(frozen=True)
class Recipe:
    """Where a run reads and writes and how it trains; the defaults make the shipped model.

    Longer training is one setting away, e.g.
    ``Recipe(transformer=TransformerSettings(steps=6000))``.
    """

    folders: paths.Folders = field(default_factory=paths.Folders)
    vae: VaeSettings = field(default_factory=VaeSettings)
    transformer: TransformerSettings = field(default_factory=TransformerSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)


def _tokenizer(recipe: Recipe) -> None:
    tokenizer.build(data.Crops(recipe.folders).captions, recipe.folders.tokenizer)


# In running order; each stage skips work already done, and training resumes from its checkpoint.
STAGES: dict[str, Callable[[Recipe], object]] = {
    "sources": lambda recipe: sources.fetch_packages(recipe.folders.source_folders),
    "prepare": lambda recipe: prepare_crops(recipe.folders, recipe.folders.source_folders),
    "tokenizer": _tokenizer,
    "vae": lambda recipe: mini_vae.train(recipe.folders, recipe.vae, vae.CONFIG),
    "latents": lambda recipe: mini_unet.encode_latents(recipe.folders, vae.CONFIG),
    "transformer": lambda recipe: transformer.train(recipe.folders, recipe.transformer),
    "export": lambda recipe: export.export(recipe.folders),
    "evaluate": lambda recipe: evaluate.evaluate(
        recipe.folders, recipe.evaluate, recipe.transformer.seed
    ),
}


def run(stage: str, recipe: Recipe = Recipe()) -> None:
    """Run one stage (a key of ``STAGES``)."""
    STAGES[stage](recipe)
