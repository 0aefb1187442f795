"""Assemble the trained parts into a diffusers StableDiffusionPipeline folder in fp16 safetensors.

The folder is ``src/mimicshield/weights/mini``; it loads with the ordinary
``StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
requires_safety_checker=False)`` and each part with its class's
``from_pretrained(folder, subfolder=...)``. The VAE config carries the latent ``scaling_factor``
measured on the training latents. A ``held_out.json`` beside the
weights lists the source files never trained on, for tests and demos that need unseen images.
"""

import json
import logging
import shutil

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

from . import data, paths, prepare, tokenizer, unet, vae

log = logging.getLogger(__name__)

# DDIM with SD 1.x's inference settings on the training schedule.
SCHEDULER = dict(unet.SCHEDULE, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(folders: paths.Folders = paths.DEFAULT) -> StableDiffusionPipeline:
    """The float32 pipeline from the last VAE and UNet checkpoints (EMA weights)."""
    tok = tokenizer.build(data.Crops(folders).captions, folders.tokenizer)
    scaling_factor = torch.load(folders.latents, weights_only=False)["scaling_factor"]
    autoencoder = AutoencoderKL(**vae.CONFIG, scaling_factor=scaling_factor)
    autoencoder.load_state_dict(vae.load_trained(folders).state_dict())
    denoiser, text_encoder = unet.load_trained(tok, folders)
    return StableDiffusionPipeline(
        vae=autoencoder.eval(),
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=denoiser,
        scheduler=DDIMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export(folders: paths.Folders = paths.DEFAULT) -> None:
    """Write the fp16 pipeline folder (replacing the weights there; the model card is kept)."""
    pipeline = build_pipeline(folders).to(torch.float16)
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(folders.shipped / part, ignore_errors=True)
    pipeline.save_pretrained(folders.shipped, safe_serialization=True)
    # The weights are fp16, but transformers would load the text encoder in the dtype named in its
    # config while diffusers loads the VAE and UNet in float32, and the pipeline fails on the mix.
    # Naming float32 makes a plain from_pretrained() load every part in float32 (exact upcast);
    # an explicit dtype=torch.float16 still loads everything in half precision.
    config_file = folders.shipped / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    # Also ship the plain BPE files, which every CLIPTokenizer version reads.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(folders.tokenizer / name, folders.shipped / "tokenizer" / name)
    _, _, records = prepare.load(folders)
    held_out = {
        group: sorted(r["key"] for r in records if r["split"] == "test" and r["group"] == group)
        for group in data.GROUPS
    }
    (folders.shipped / "held_out.json").write_text(json.dumps(held_out, indent=1) + "\n")
    log.info("exported %s", folders.shipped)
