"""Configurations of random-weight models: ``tiny`` for tests, ``sd15-random`` for benchmarks.

Cost does not depend on weight values, so a random model of Stable Diffusion 1.5's exact
architecture times and sizes the real thing without a download. The tiny one follows diffusers'
own test recipe (UNet blocks (32, 64), two-block VAE, 32-wide CLIP text encoder).
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path

_SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}

TINY = {
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 32,
    },
    "unet": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "text_encoder": {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    "scheduler": _SD_SCHEDULER,
}

SD15 = {
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    },
    "scheduler": _SD_SCHEDULER,
}


def write_test_tokenizer(folder: str | os.PathLike) -> None:
    """Write a character-level CLIP BPE tokenizer (vocab.json, merges.txt) for random models.

    Real CLIP vocabularies come with real checkpoints; random models only need a tokenizer that
    maps text to valid ids of the same kind, so single printable characters suffice.
    """
    folder = Path(folder)
    characters = [c for c in string.printable if not c.isspace()]
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))


def test_clip_tokenizer():
    """A ``CLIPTokenizer`` over ``write_test_tokenizer``'s vocabulary (random models' tokenizer)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_test_tokenizer(folder)
        return CLIPTokenizer.from_pretrained(folder)
