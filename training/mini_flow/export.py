"""Assemble the trained parts into a diffusers StableDiffusion3Pipeline folder in fp16 safetensors.

The folder is ``src/mimicshield/weights/mini-flow``; it loads with the ordinary
``StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)``
(``model_index.json`` records no T5 as null; diffusers still wants the two arguments) and each
part with its class's ``from_pretrained(folder, subfolder=...)``. The VAE config carries SD3's
latent ``shift_factor`` and ``scaling_factor`` measured on the training latents; ``tokenizer``
and ``tokenizer_2`` are the same BPE. ``held_out.json`` lists the source files never trained on.
"""

import json
import logging
import shutil

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from training.mini import data, prepare, tokenizer
from training.mini import vae as mini_vae

from . import paths, transformer, vae

log = logging.getLogger(__name__)

PARTS = ("vae", "transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def build_pipeline(folders: paths.Folders = paths.DEFAULT) -> StableDiffusion3Pipeline:
    """The float32 pipeline from the last VAE and transformer checkpoints (EMA weights)."""
    tok = tokenizer.build(data.Crops(folders).captions, folders.tokenizer)
    store = torch.load(folders.latents, weights_only=False)
    autoencoder = AutoencoderKL(
        **vae.CONFIG,
        scaling_factor=store["scaling_factor"],
        shift_factor=store["shift_factor"],
    )
    autoencoder.load_state_dict(mini_vae.load_trained(folders, vae.CONFIG).state_dict())
    denoiser, text_encoder, text_encoder_2 = transformer.load_trained(tok, folders)
    return StableDiffusion3Pipeline(
        transformer=denoiser,
        scheduler=FlowMatchEulerDiscreteScheduler(**transformer.SCHEDULER),
        vae=autoencoder.eval(),
        text_encoder=text_encoder,
        tokenizer=tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def export(folders: paths.Folders = paths.DEFAULT) -> None:
    """Write the fp16 pipeline folder (replacing the weights there; the model card is kept)."""
    pipeline = build_pipeline(folders).to(torch.float16)
    for part in (*PARTS, "scheduler"):
        shutil.rmtree(folders.shipped / part, ignore_errors=True)
    pipeline.save_pretrained(folders.shipped, safe_serialization=True)
    for encoder in ("text_encoder", "text_encoder_2"):
        # As in the miniature: transformers would load the text encoders in the dtype their
        # config names while diffusers loads the VAE and transformer in float32; float32 makes a
        # plain from_pretrained() load every part in float32 (an exact upcast of the fp16 files).
        config_file = folders.shipped / encoder / "config.json"
        config = json.loads(config_file.read_text())
        config["dtype"] = "float32"
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    for folder in ("tokenizer", "tokenizer_2"):  # the plain BPE files every version reads
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(folders.tokenizer / name, folders.shipped / folder / name)
    _, _, records = prepare.load(folders)
    held_out = {
        group: sorted(r["key"] for r in records if r["split"] == "test" and r["group"] == group)
        for group in data.GROUPS
    }
    (folders.shipped / "held_out.json").write_text(json.dumps(held_out, indent=1) + "\n")
    log.info("exported %s", folders.shipped)
