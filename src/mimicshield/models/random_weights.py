"""Configurations of random-weight models: tiny ones for tests, full-size ones for benchmarks.

Cost does not depend on weight values, so a random model of a real checkpoint's exact
architecture times and sizes the real thing without a download. Each configuration is a plain
dict with one entry per part, named as in the family's diffusers pipeline (``vae``, ``unet`` or
``transformer``, ``text_encoder``, ``text_encoder_2``, ``text_encoder_3``, ``scheduler``), whose
value holds the keyword arguments of that part's constructor (for transformers models: of its
config class). ``PART_CLASSES`` says which class builds each part; ``random_parts`` builds them.

- Tests: ``TINY`` (SD 1.x/2.x), ``TINY_SDXL``, ``TINY_SD3``, ``TINY_FLUX``: diffusers' own test
  recipes, 32² images, milliseconds per call on a CPU. Where a real model has two different text
  encoders the tiny one does too (widths 32 and 48), so that a part used in the wrong place fails
  with a shape error instead of passing silently.
- Benchmarks: ``SD15``, ``SDXL``, ``SD3_MEDIUM``, ``SD35_MEDIUM``, ``SD35_LARGE``, ``FLUX_DEV``:
  the config.json files of the real checkpoints (sources beside each).
- Tokenizers: ``write_test_tokenizer`` (CLIP) and ``write_test_t5_tokenizer`` write small
  character-level tokenizers that load offline.
"""

from __future__ import annotations

import importlib
import json
import os
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


# ---- shared parts of the full-size families ----------------------------------------------------

# openai/clip-vit-large-patch14 (CLIP ViT-L/14), the first text encoder of SDXL, SD3 and FLUX.1;
# SD3 uses it with its projection (CLIPTextModelWithProjection), the others without.
_CLIP_L = SD15["text_encoder"] | {
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (OpenCLIP bigG/14), the second text encoder of SDXL
# and SD3 (CLIPTextModelWithProjection: its projected pooled output conditions the denoiser).
_CLIP_G = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# google/t5-v1_1-xxl, encoder only (T5EncoderModel, 4.76 B parameters): the third text encoder
# of SD3/3.5 and the second of FLUX.1.
_T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
# The 16-channel VAE of SD3/3.5 and FLUX.1 (same layout, different latent statistics): SD 1.5's
# encoder and decoder widths, no 1×1 quant convolutions, latents (z − shift) · scale.
_VAE_16 = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
# EulerDiscreteScheduler over SD's β schedule.
_SDXL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
_SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}  # FlowMatchEulerDiscreteScheduler
# FLUX.1-dev shifts its flow schedule with the image's token count: μ runs linearly from
# base_shift at 256 tokens to max_shift at 4096 tokens (1024²).
_FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# ---- tiny test versions ------------------------------------------------------------------------

_TINY_CLIP = TINY["text_encoder"] | {"projection_dim": 32}
# A second, wider CLIP for the families with two: 48 wide, so a swapped pair fails loudly.
_TINY_CLIP_2 = _TINY_CLIP | {"hidden_size": 48, "projection_dim": 48, "hidden_act": "gelu"}
# A T5 encoder, wider again (96 ≥ the two CLIPs' 80, as 4096 ≥ 768 + 1280 in SD3), with a
# vocabulary that holds write_test_t5_tokenizer's pieces.
_TINY_T5 = {
    "vocab_size": 256,
    "d_model": 96,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "feed_forward_proj": "gated-gelu",
    "pad_token_id": 0,
    "eos_token_id": 1,
}
_TINY_VAE_16 = TINY["vae"] | {
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

# SDXL's UNet takes the concatenated token states of both text encoders (32 + 48 = 80 wide) and
# adds to its time embedding the second encoder's pooled, projected vector (48) and the six
# size/crop conditions, each embedded in addition_time_embed_dim (6 · 8 = 48): 48 + 48 = 96.
# Layout after diffusers' tests/pipelines/stable_diffusion_xl (text_time embedding, linear
# projections, per-block transformer depth and heads), at TINY's widths.
TINY_SDXL = {
    "vae": TINY["vae"] | {"scaling_factor": 0.13025, "force_upcast": True},
    "unet": TINY["unet"]
    | {
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 2],
        "use_linear_projection": True,
        "cross_attention_dim": 32 + 48,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 48,
    },
    "text_encoder": _TINY_CLIP,
    "text_encoder_2": _TINY_CLIP_2,
    "scheduler": _SDXL_SCHEDULER,
}

# SD3's MMDiT reads one joint text sequence: both CLIPs' token states concatenated (32 + 48 = 80
# wide), zero-padded to T5's width (96 = joint_attention_dim), then T5's tokens; and both pooled
# vectors concatenated (80 = pooled_projection_dim). caption_projection_dim must equal heads ×
# head_dim (4 · 8). One dual-attention layer and RMS q/k norm, as in SD3.5-medium's MMDiT-X.
# After diffusers' tests/pipelines/stable_diffusion_3, with a 16-channel VAE and 2×2 patches.
TINY_SD3 = {
    "vae": _TINY_VAE_16 | {"shift_factor": 0.0609, "scaling_factor": 1.5305, "force_upcast": True},
    "transformer": {
        "sample_size": 16,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "joint_attention_dim": 96,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 32 + 48,
        "pos_embed_max_size": 32,
        "dual_attention_layers": [0],
        "qk_norm": "rms_norm",
    },
    "text_encoder": _TINY_CLIP,
    "text_encoder_2": _TINY_CLIP_2,
    "text_encoder_3": _TINY_T5,
    "scheduler": _SD3_SCHEDULER,
}

# FLUX.1 packs 2×2 patches of the 16-channel latent into tokens of 64 channels; its pooled vector
# is CLIP's (32), its token sequence T5's (96). Rotary embedding axes (4, 4, 8) add up to the head
# dimension 16. guidance_embeds: the guidance-distilled FLUX.1-dev takes the guidance scale as an
# input. After diffusers' tests/pipelines/flux.
TINY_FLUX = {
    "vae": _TINY_VAE_16 | {"shift_factor": 0.1159, "scaling_factor": 0.3611, "force_upcast": True},
    "transformer": {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 96,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": [4, 4, 8],
    },
    "text_encoder": _TINY_CLIP,
    "text_encoder_2": _TINY_T5,
    "scheduler": _FLUX_SCHEDULER,
}

# ---- full-size architectures -------------------------------------------------------------------
# Sources: the config.json files of the Hugging Face repositories named below (diffusers layout),
# read through public copies of them; cross-checked against each other and, for FLUX.1, against
# Black Forest Labs' reference parameters (hidden 3072 = 24 × 128, depth 19 + 38).

# stabilityai/stable-diffusion-xl-base-1.0: UNet 2.57 B, VAE 84 M (fp16 overflows: force_upcast),
# CLIP-L 123 M + bigG 695 M.
SDXL = {
    "vae": SD15["vae"] | {"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "unet": {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2, 10],
        "attention_head_dim": [5, 10, 20],
        "use_linear_projection": True,
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "norm_num_groups": 32,
    },
    "text_encoder": _CLIP_L,
    "text_encoder_2": _CLIP_G,
    "scheduler": _SDXL_SCHEDULER,
}

_SD3_VAE = _VAE_16 | {"shift_factor": 0.0609, "scaling_factor": 1.5305}
_SD3_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "attention_head_dim": 64,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 2048,
}

# stabilityai/stable-diffusion-3-medium-diffusers: MMDiT 2.03 B (24 layers × 24 heads of 64).
SD3_MEDIUM = {
    "vae": _SD3_VAE,
    "transformer": _SD3_TRANSFORMER
    | {
        "num_layers": 24,
        "num_attention_heads": 24,
        "caption_projection_dim": 1536,
        "pos_embed_max_size": 192,
    },
    "text_encoder": _CLIP_L,
    "text_encoder_2": _CLIP_G,
    "text_encoder_3": _T5_XXL,
    "scheduler": _SD3_SCHEDULER,
}

# stabilityai/stable-diffusion-3.5-medium: MMDiT-X 2.24 B, the first 13 layers with a second,
# image-only attention; RMS-normalised q/k; positions for up to 384² patches.
SD35_MEDIUM = SD3_MEDIUM | {
    "transformer": SD3_MEDIUM["transformer"]
    | {"pos_embed_max_size": 384, "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"},
}

# stabilityai/stable-diffusion-3.5-large: MMDiT 8.06 B (38 layers × 38 heads of 64).
SD35_LARGE = SD3_MEDIUM | {
    "transformer": _SD3_TRANSFORMER
    | {
        "num_layers": 38,
        "num_attention_heads": 38,
        "caption_projection_dim": 2432,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
    },
}

# black-forest-labs/FLUX.1-dev: 19 double-stream + 38 single-stream blocks, 24 heads of 128
# (11.9 B), guidance-distilled; CLIP-L's pooled vector and T5-XXL's 512 tokens.
FLUX_DEV = {
    "vae": _VAE_16 | {"shift_factor": 0.1159, "scaling_factor": 0.3611},
    "transformer": {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": True,
        "axes_dims_rope": [16, 56, 56],
    },
    "text_encoder": _CLIP_L,
    "text_encoder_2": _T5_XXL,
    "scheduler": _FLUX_SCHEDULER,
}

# ---- building ------------------------------------------------------------------------------------

#: The class of each part, per family ("library.Class"); names as in the diffusers pipelines.
PART_CLASSES = {
    "sd": {
        "vae": "diffusers.AutoencoderKL",
        "unet": "diffusers.UNet2DConditionModel",
        "text_encoder": "transformers.CLIPTextModel",
        "scheduler": "diffusers.DDPMScheduler",
    },
    "sdxl": {
        "vae": "diffusers.AutoencoderKL",
        "unet": "diffusers.UNet2DConditionModel",
        "text_encoder": "transformers.CLIPTextModel",
        "text_encoder_2": "transformers.CLIPTextModelWithProjection",
        "scheduler": "diffusers.EulerDiscreteScheduler",
    },
    "sd3": {
        "vae": "diffusers.AutoencoderKL",
        "transformer": "diffusers.SD3Transformer2DModel",
        "text_encoder": "transformers.CLIPTextModelWithProjection",
        "text_encoder_2": "transformers.CLIPTextModelWithProjection",
        "text_encoder_3": "transformers.T5EncoderModel",
        "scheduler": "diffusers.FlowMatchEulerDiscreteScheduler",
    },
    "flux": {
        "vae": "diffusers.AutoencoderKL",
        "transformer": "diffusers.FluxTransformer2DModel",
        "text_encoder": "transformers.CLIPTextModel",
        "text_encoder_2": "transformers.T5EncoderModel",
        "scheduler": "diffusers.FlowMatchEulerDiscreteScheduler",
    },
}


def random_parts(
    family: str, config: dict, *, parts: Iterable[str] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Build a family's parts from a configuration, with seeded random weights.

    Weights go to torch's current default device and dtype, so under ``torch.device("meta")``
    nothing is allocated (for counting parameters and FLOPs); schedulers stay on the CPU. The
    caller's global RNG state is left as it was.

    Args:
        family: a key of ``PART_CLASSES`` ("sd", "sdxl", "sd3", "flux").
        config: that family's configuration (``TINY_SDXL``, ``FLUX_DEV``, ...).
        parts: the names to build (default: every part in ``config``).
        seed: seeds the initialisation.

    Returns:
        name → module (models, in eval mode) or scheduler; no tokenizers.
    """
    import torch

    if family not in PART_CLASSES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(PART_CLASSES)}")
    classes = PART_CLASSES[family]
    names = list(config) if parts is None else list(parts)
    unknown = [name for name in names if name not in classes or name not in config]
    if unknown:
        raise ValueError(f"{family} has no part(s) {unknown}; it has {sorted(config)}")
    built = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            library, class_name = classes[name].split(".")
            cls = getattr(importlib.import_module(library), class_name)
            if library == "transformers":
                built[name] = cls(cls.config_class(**config[name])).eval()
            elif name == "scheduler":
                # Schedulers hold their tables on the CPU, whatever the default device.
                with torch.device("cpu"):
                    built[name] = cls(**config[name])
            else:
                built[name] = cls(**config[name]).eval()
    return built


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


def write_test_t5_tokenizer(folder: str | os.PathLike, *, model_max_length: int = 512) -> None:
    """Write a character-level T5 tokenizer (tokenizer.json, tokenizer_config.json).

    T5's layout: ids 0, 1, 2 are <pad>, </s>, <unk>; text is split on spaces, each word marked
    with a leading "▁" (Metaspace); every sequence ends with </s>. The Unigram vocabulary holds
    "▁" and each printable character with and without the mark (192 pieces, ids < 256: the tiny
    T5 encoders' vocabulary), so any ASCII prompt tokenizes without unknowns. Loads offline with
    ``T5TokenizerFast.from_pretrained(folder)`` (and ``AutoTokenizer``).

    Args:
        folder: an existing folder.
        model_max_length: the tokenizer's default maximum length (the pipelines pass their own
            ``max_sequence_length``).
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    folder = Path(folder)
    specials = ["<pad>", "</s>", "<unk>"]
    characters = [c for c in string.printable if not c.isspace()]
    # Scores are log-probabilities: a marked piece beats "▁" followed by the bare character.
    pieces = (
        [(token, 0.0) for token in specials]
        + [("▁", -2.0)]
        + [(c, -2.0) for c in characters]
        + [("▁" + c, -2.0) for c in characters]
    )
    tokenizer = Tokenizer(Unigram(pieces, unk_id=specials.index("<unk>"), byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    eos = specials.index("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", eos)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": model_max_length,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "extra_ids": 0,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
