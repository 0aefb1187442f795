"""What the protector trains on: uint8 images in memory, drawn in batches from one generator.

Two sources, both ending as one uint8 (N, 3, R, R) tensor:

- the miniature's crops (``training/mini``'s ``sources`` and ``prepare`` stages, run by
  ``prepare_crops`` without the few giant source files), their *training* split only: the
  miniature's held-out files, and so the six bundled samples, are never seen. Every
  ``VALIDATION_EVERY``-th training crop is kept aside for validation;
- a folder of images (for a real model): each file resized so its short side is R (Lanczos)
  and centre-cropped to R × R.

Batches are drawn with replacement from the training generator, whose state the checkpoint
saves, with a random horizontal flip, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from training.mini import data as mini_data
from training.mini import paths as mini_paths
from training.mini import prepare, sources

#: Where the protector's copy of the crop cache lives (the miniature's own stays untouched).
CROP_FOLDERS = mini_paths.Folders(data=mini_paths.REPO / "training" / "data" / "protector")
#: Source files larger than this are skipped: a 623-megapixel clip-art PNG took 12.5 GB to decode
#: and was killed for memory on a shared 23 GB machine; 16 of 6,936 files are that large.
MAX_SOURCE_PIXELS = 40_000_000
#: One training-split crop in this many is kept out of training, for validation.
VALIDATION_EVERY = 50
#: File suffixes read from an image folder.
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Images:
    """Training and validation images, uint8 (N, 3, R, R).

    Attributes:
        train: what batches are drawn from.
        validation: a fixed set for the logs and the pilot (may be empty).
        source: where they came from, for the model card.
    """

    train: torch.Tensor
    validation: torch.Tensor
    source: str

    @property
    def resolution(self) -> int:
        """R, the side of every image."""
        return self.train.shape[-1]


def prepare_crops(
    folders: mini_paths.Folders = CROP_FOLDERS,
    sources_from: mini_paths.Folders = mini_paths.DEFAULT,
) -> None:
    """The miniature's ``prepare`` stage over its sources up to ``MAX_SOURCE_PIXELS`` each.

    Same crops, captions and held-out split (by file) as the miniature's cache, minus the few
    giant files; ``sources_from`` holds the unpacked packages (``python -m training.mini sources``).
    """
    records = []
    for record in sources.list_sources(sources_from):
        try:
            with Image.open(record["path"]) as image:  # reads the header only
                if image.width * image.height <= MAX_SOURCE_PIXELS:
                    records.append(record)
        except Image.DecompressionBombError:  # Pillow's own limit, far above ours
            continue
    prepare.prepare(folders, records)


def mini_training_crops(folders: mini_paths.Folders = CROP_FOLDERS) -> Images:
    """The miniature's training-split crops (64 × 64), every 50th kept for validation.

    Raises:
        FileNotFoundError: the crop cache is missing, with the command that builds it.
    """
    if not folders.images.exists():
        raise FileNotFoundError(
            f"no crop cache at {folders.images}: fetch the sources with `python -m training.mini "
            "sources` (≈ 265 MB of Debian packages), then `python -m training.protector "
            "--prepare` (a few minutes)"
        )
    crops = mini_data.Crops(folders)
    rows = crops.train_index
    held = np.zeros(len(rows), dtype=bool)
    held[::VALIDATION_EVERY] = True
    return Images(
        train=crops.images[torch.as_tensor(rows[~held])],
        validation=crops.images[torch.as_tensor(rows[held])],
        source="training split of the miniature's crops "
        f"({_relative(folders.images)}, every {VALIDATION_EVERY}th kept for validation)",
    )


def _relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (records stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(mini_paths.REPO))
    except ValueError:
        return str(path)


def image_folder(folder: Path, resolution: int) -> Images:
    """Every image under ``folder``, short side resized to ``resolution``, centre-cropped.

    Raises:
        FileNotFoundError: the folder holds no readable image.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
    pictures = []
    for path in files:
        with Image.open(path) as image:
            square = ImageOps.fit(
                ImageOps.exif_transpose(image).convert("RGB"),
                (resolution, resolution),
                Image.Resampling.LANCZOS,
            )
        pictures.append(torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1))
    if not pictures:
        raise FileNotFoundError(f"no images ({', '.join(SUFFIXES)}) under {folder}")
    stacked = torch.stack(pictures)
    held = torch.zeros(len(stacked), dtype=torch.bool)
    if len(stacked) >= 2 * VALIDATION_EVERY:  # a small folder is all for training
        held[::VALIDATION_EVERY] = True
    return Images(train=stacked[~held], validation=stacked[held], source=str(folder))


def draw_batch(images: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images drawn with replacement, randomly mirrored: (count, 3, R, R) in [0, 1]."""
    rows = torch.randint(len(images), (count,), generator=generator)
    batch = images[rows].float() / 255
    flip = torch.rand(count, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)
