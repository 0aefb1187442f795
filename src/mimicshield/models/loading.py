"""Which family a model is, and loading it: hub ids, folders, single files, miniatures, random.

The family is read, never guessed from a name: a diffusers folder's ``model_index.json`` names
its pipeline class (``StableDiffusionXLPipeline`` → SDXL), and a single ``.safetensors``
checkpoint is classified from its tensor names and shapes by diffusers' own
``infer_diffusers_model_type``. Every way of failing ends in ``ModelUnavailableError`` with one
sentence that says what is missing and how to get it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    DIFFUSERS_DEFAULT_PIPELINE_PATHS,
    infer_diffusers_model_type,
)
from huggingface_hub import hf_hub_download
from safetensors import safe_open

from . import random_weights
from .base import LatentDiffusion
from .devices import ModelUnavailableError, resolve_device, resolve_dtype
from .flux import Flux
from .hub import hub_reachable
from .sd import StableDiffusion
from .sd3 import StableDiffusion3
from .sdxl import StableDiffusionXL

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_WEIGHTS = Path(__file__).parent.parent / "weights"
#: The miniature models shipped with the package (see their README.md): not real models.
MINI_MODEL_DIR = _WEIGHTS / "mini"
MINI_FLOW_MODEL_DIR = _WEIGHTS / "mini-flow"
MINIATURES = {"mini": MINI_MODEL_DIR, "mini-flow": MINI_FLOW_MODEL_DIR}

#: Every family, in the order the README's table lists them.
FAMILIES: tuple[type[LatentDiffusion], ...] = (
    StableDiffusion,
    StableDiffusionXL,
    StableDiffusion3,
    Flux,
)

#: Names that build a randomly initialised model from a configuration instead of loading weights:
#: ``tiny*`` for tests, the full-size ones for benchmarks (exact for time and memory).
RANDOM_MODELS: dict[str, tuple[type[LatentDiffusion], dict]] = {
    "tiny": (StableDiffusion, random_weights.TINY),
    "sd15-random": (StableDiffusion, random_weights.SD15),
    "tiny-sdxl": (StableDiffusionXL, random_weights.TINY_SDXL),
    "tiny-sd3": (StableDiffusion3, random_weights.TINY_SD3),
    "tiny-flux": (Flux, random_weights.TINY_FLUX),
    "sdxl-random": (StableDiffusionXL, random_weights.SDXL),
    "sd35-medium-random": (StableDiffusion3, random_weights.SD35_MEDIUM),
    "flux-dev-random": (Flux, random_weights.FLUX_DEV),
}

#: diffusers' single-file model types → our family (other types are not text-to-image LDMs).
_SINGLE_FILE_FAMILIES = {
    "v1": StableDiffusion,
    "v2": StableDiffusion,
    "inpainting": StableDiffusion,
    "inpainting_v2": StableDiffusion,
    "xl_base": StableDiffusionXL,
    "xl_inpaint": StableDiffusionXL,
    "sd3": StableDiffusion3,
    "sd35_medium": StableDiffusion3,
    "sd35_large": StableDiffusion3,
    "flux-dev": Flux,
    "flux-schnell": Flux,
}


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "fp32",
    config: str | os.PathLike | None = None,
) -> LatentDiffusion:
    """Load a model of any family; see ``LatentDiffusion.from_pretrained``.

    Args:
        name_or_path: a name of ``MINIATURES`` or ``RANDOM_MODELS``, a hub id, a diffusers
            folder, or a ``.safetensors`` single-file checkpoint.
        device: "auto", "cpu", "cuda", ... (``resolve_device``).
        dtype: "fp32", "bf16", "fp16" or a torch dtype.
        config: for a single file only: a hub id or local diffusers folder holding the
            configuration of its architecture (default: diffusers' reference repository for the
            detected type, which must then be in the local cache when offline).

    Raises:
        ModelUnavailableError: with the sentence that says what is missing and how to get it.
    """
    name = str(name_or_path)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if name in RANDOM_MODELS:
        return random_model(name).to(torch_device, torch_dtype)
    if name.endswith((".safetensors", ".ckpt")):
        model = _load_single_file(Path(name), config=config, dtype=torch_dtype)
    else:
        model = _load_folder(name, dtype=torch_dtype)
    # With the dtype again: a family may keep a part wider than the rest (SDXL's VAE in fp16).
    return model.to(torch_device, torch_dtype)


def random_model(architecture: str, *, seed: int = 0) -> LatentDiffusion:
    """A model with random weights from ``RANDOM_MODELS`` (seeded, CPU, fp32)."""
    if architecture not in RANDOM_MODELS:
        raise ValueError(
            f"unknown random architecture {architecture!r}; choose one of {sorted(RANDOM_MODELS)}"
        )
    family, config = RANDOM_MODELS[architecture]
    return family.from_config(config, name=architecture, seed=seed)


def family_class(family: str) -> type[LatentDiffusion]:
    """The model class of a family's short name ("sd", "sdxl", "sd3", "flux")."""
    classes = {cls.family: cls for cls in FAMILIES}
    if family not in classes:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(classes)}")
    return classes[family]


def family_of_index(index: dict, source: str) -> type[LatentDiffusion]:
    """The family whose pipelines include ``index["_class_name"]`` (a model_index.json)."""
    pipeline = index.get("_class_name")
    for family in FAMILIES:
        if pipeline in family.pipeline_names:
            return family
    supported = ", ".join(name for family in FAMILIES for name in family.pipeline_names)
    raise ModelUnavailableError(
        f"'{source}' holds a {pipeline} model, which mimicshield does not support; it supports "
        f"{supported}."
    )


def _load_folder(source: str, *, dtype: torch.dtype) -> LatentDiffusion:
    label = source
    if source in MINIATURES:
        folder = MINIATURES[source]
        if not (folder / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"the miniature model '{source}' is not installed at {folder}; reinstall "
                "mimicshield"
            )
        source = str(folder)
    # Without a reachable hub, read the cache only: the hub client would otherwise retry for
    # tens of seconds before failing with the same answer.
    local = Path(source).exists() or not hub_reachable()
    index = _read_index(source, local_files_only=local)
    family = family_of_index(index, source)
    # Parts the folder leaves out (SD3 saved without its T5) must be named absent again, or the
    # pipeline looks for them.
    absent = {
        part: None
        for part in family.part_names
        if part not in index or index[part] in (None, [None, None])
    }
    try:
        pipeline = family.pipeline_classes()["text2img"].from_pretrained(
            source, dtype=dtype, local_files_only=local, **family.pipeline_arguments(), **absent
        )
    except (OSError, ValueError, TypeError) as error:
        logger.debug("loading %s failed", source, exc_info=error)
        raise ModelUnavailableError(_missing_model_sentence(source, family)) from None
    return family.from_pipeline(pipeline, name=label)


def _read_index(source: str, *, local_files_only: bool) -> dict:
    """The model_index.json of a folder or hub id."""
    try:
        if Path(source).is_dir():
            path = Path(source) / "model_index.json"
        else:
            path = Path(
                hf_hub_download(source, "model_index.json", local_files_only=local_files_only)
            )
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        logger.debug("reading the model index of %s failed", source, exc_info=error)
        raise ModelUnavailableError(_missing_model_sentence(source, None)) from None


def _load_single_file(
    path: Path, *, config: str | os.PathLike | None, dtype: torch.dtype
) -> LatentDiffusion:
    """A single-file checkpoint through the family pipeline's ``from_single_file``."""
    if not path.is_file():
        raise ModelUnavailableError(f"the checkpoint file '{path}' does not exist")
    model_type = single_file_type(path)
    family = _SINGLE_FILE_FAMILIES.get(model_type)
    if family is None:
        raise ModelUnavailableError(
            f"'{path}' is a {model_type!r} checkpoint, not a text-to-image model of a supported "
            f"family (diffusers' single-file types {', '.join(sorted(_SINGLE_FILE_FAMILIES))})"
        )
    reference = (
        config or DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    )
    local = Path(reference).exists() or not hub_reachable()
    try:
        pipeline = family.pipeline_classes()["text2img"].from_single_file(
            str(path),
            config=str(reference),
            dtype=dtype,
            local_files_only=local,
            **family.pipeline_arguments(),
        )
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.debug("loading %s failed", path, exc_info=error)
        raise ModelUnavailableError(
            f"'{path}' is a single-file {family.family} checkpoint ({model_type}); loading it "
            f"needs the diffusers configuration of {reference} (model_index.json and each part's "
            "config and tokenizer files, a few MB, no weights), which is not available here: "
            f"download it once with `hf download {reference} --exclude '*.safetensors' '*.bin' "
            "'*.pth'` on a machine with network, or point --model-config at a local diffusers "
            "folder of the same architecture."
        ) from None
    return family.from_pipeline(pipeline, name=str(path))


def single_file_type(path: Path) -> str:
    """Diffusers' model type of a ``.safetensors`` checkpoint, read from its header only."""

    class _Shape:
        """What ``infer_diffusers_model_type`` reads of a tensor: its shape."""

        def __init__(self, shape: list[int]) -> None:
            self.shape = torch.Size(shape)

    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            header = {
                key: _Shape(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()
            }
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ModelUnavailableError(
            f"'{path}' is not a readable .safetensors checkpoint ({error})"
        ) from None
    model_type = infer_diffusers_model_type(header)
    # diffusers answers "v1" for any file it does not recognise; only an SD 1.x UNet key says so.
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in header:
        return "unrecognised"
    return model_type


def model_notes(model: LatentDiffusion) -> list[str]:
    """What a user must know about the model before trusting any result: random or miniature."""
    if model.random_weights:
        return [
            f"model '{model.name}' has RANDOM weights: this run exercises the code path and "
            "protects against nothing real."
        ]
    if model.name in MINIATURES:
        return [
            f"model '{model.name}' is a miniature trained here on a few thousand small images "
            "for demonstration; it is not a real diffusion model and results against it say "
            "nothing about real models."
        ]
    return []


def _missing_model_sentence(source: str, family: type[LatentDiffusion] | None) -> str:
    if Path(source).exists():
        parts = ", ".join(f"{part}/" for part in family.part_names) if family else "its parts"
        return (
            f"'{source}' is not a complete diffusers model folder (it needs model_index.json and "
            f"{parts}); use a folder saved with save_pretrained or a hub id instead."
        )
    return (
        f"The model '{source}' is not in the local Hugging Face cache and cannot be downloaded "
        f"now (no network, or HF_HUB_OFFLINE=1): download it once with `hf download {source}` "
        "on a machine with network, or use a local diffusers folder instead (or 'mini', the "
        "bundled miniature)."
    )
