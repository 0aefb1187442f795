"""Where every stage reads and writes: data caches, checkpoints, the shipped model folder."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "training" / "data"
RUNS = REPO / "training" / "runs"

DEBS = DATA / "debs"
EXTRACT = DATA / "extract"
MANIFEST = DATA / "manifest.json"  # one record per source file: path, caption, group, split
IMAGES = DATA / "images.npz"  # uint8 (N, 64, 64, 3) plus per-row file index
TOKENIZER = RUNS / "tokenizer"
VAE_RUN = RUNS / "vae"
LATENTS = RUNS / "latents.pt"
UNET_RUN = RUNS / "unet"

SHIPPED = REPO / "src" / "mimicshield" / "weights" / "mini"

RESOLUTION = 64
