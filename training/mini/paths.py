"""Where every stage reads and writes: data caches, checkpoints, the shipped model folder."""

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RESOLUTION = 64


@dataclass(frozen=True)
class Folders:
    """The three roots of a run; the defaults are the repository's own (tests use a temp dir)."""

    data: Path = REPO / "training" / "data"  # decoded sources and the crop cache
    runs: Path = REPO / "training" / "runs"  # tokenizer, checkpoints, latents, logs
    shipped: Path = REPO / "src" / "mimicshield" / "weights" / "mini"  # the exported model

    @property
    def debs(self) -> Path:
        """The downloaded Debian packages (``apt-get download``) the images come from."""
        return self.data / "debs"

    @property
    def extract(self) -> Path:
        """Those packages unpacked (``dpkg -x``), one folder per package."""
        return self.data / "extract"

    @property
    def manifest(self) -> Path:
        """One record per source file: path, caption, group, split."""
        return self.data / "manifest.json"

    @property
    def images(self) -> Path:
        """uint8 (N, 64, 64, 3) crops plus the source-file index of each row."""
        return self.data / "images.npz"

    @property
    def tokenizer(self) -> Path:
        """The CLIP tokenizer learned from the training captions (vocab.json, merges.txt)."""
        return self.runs / "tokenizer"

    @property
    def vae_run(self) -> Path:
        """The VAE training run: its ``last.pt`` checkpoint."""
        return self.runs / "vae"

    @property
    def latents(self) -> Path:
        """The VAE posterior mean and std of every crop and its mirror, and the scaling factor."""
        return self.runs / "latents.pt"

    @property
    def unet_run(self) -> Path:
        """The UNet and text encoder training run: its ``last.pt`` checkpoint."""
        return self.runs / "unet"


DEFAULT = Folders()
