"""Decode every source image once into a cached uint8 array of 64x64 RGB crops, split by file.

Clip art is composited on white and padded to a square so the whole drawing is kept.
Photos and wallpapers are large, so each yields several square crops at random scales
(the first is always the centred full-height square); a crop is a view of a real image, never
a generated one. The held-out split is decided per source file (a stable hash of its key),
so no crop of a held-out file is ever trained on.
"""

import hashlib
import json
import logging
import random
from multiprocessing import Pool

import numpy as np
from PIL import Image

from . import paths, sources

log = logging.getLogger(__name__)

# Some source files exceed Pillow's default decompression-bomb limit (~89 MP): a few clip-art
# PNGs are rendered at up to 20990x29700 (623 MP). They are known files from Debian packages,
# so the limit is raised to what they need (decoding one takes ~2.5 GB), not removed.
SOURCE_MAX_PIXELS = 700_000_000

CROPS_TRAIN = 32  # crops per training photo or wallpaper
CROPS_HELD_OUT = 8  # crops per held-out photo or wallpaper
HELD_OUT_PERCENT = {"clipart": 4, "wallpaper": 15}


def is_held_out(record: dict) -> bool:
    """Whether a source file (``{key, group}``) belongs to the held-out split."""
    if record["group"] == "photo":
        return record["key"].removeprefix("skimage/") in sources.HELD_OUT_PHOTOS
    digest = int(hashlib.sha256(record["key"].encode()).hexdigest(), 16)
    return digest % 100 < HELD_OUT_PERCENT[record["group"]]


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, image).convert("RGB")


def _clipart_square(image: Image.Image, size: int) -> np.ndarray:
    image = _to_rgb_on_white(image)
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))


def _random_crops(image: Image.Image, size: int, count: int, seed: int) -> list[np.ndarray]:
    image = _to_rgb_on_white(image) if image.mode in ("RGBA", "LA", "P") else image.convert("RGB")
    rng = random.Random(seed)
    short = min(image.size)
    crops = []
    for i in range(count):
        side = short if i == 0 else int(short * rng.uniform(0.25, 1.0))
        left = (image.width - side) // 2 if i == 0 else rng.randint(0, image.width - side)
        top = (image.height - side) // 2 if i == 0 else rng.randint(0, image.height - side)
        crop = image.crop((left, top, left + side, top + side))
        crops.append(
            np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))
        )
    return crops


def _decode(job: tuple[int, dict]) -> tuple[int, list[np.ndarray]]:
    index, record = job
    Image.MAX_IMAGE_PIXELS = SOURCE_MAX_PIXELS
    try:
        with Image.open(record["path"]) as image:
            if record["group"] == "clipart":
                return index, [_clipart_square(image, paths.RESOLUTION)]
            count = CROPS_HELD_OUT if record["split"] == "test" else CROPS_TRAIN
            return index, _random_crops(image, paths.RESOLUTION, count, seed=index)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        log.warning("skipping %s: %s", record["path"], error)
        return index, []


def prepare(
    folders: paths.Folders = paths.DEFAULT, records: list[dict] | None = None, workers: int = 2
) -> None:
    """Write ``manifest.json`` and ``images.npz`` under ``folders.data`` (skipped if present).

    ``records`` are the source files ``{path, key, group, caption}`` to decode; by default those
    ``sources.list_sources`` finds in the unpacked packages.
    """
    if folders.images.exists() and folders.manifest.exists():
        log.info("image cache present: %s", folders.images)
        return
    records = sources.list_sources(folders) if records is None else records
    for record in records:
        record["split"] = "test" if is_held_out(record) else "train"
    images, owner = [], []
    with Pool(workers) as pool:
        for done, (index, crops) in enumerate(pool.imap(_decode, enumerate(records), chunksize=16)):
            images.extend(crops)
            owner.extend([index] * len(crops))
            records[index]["rows"] = len(crops)
            if done % 500 == 0:
                log.info("decoded %d/%d files", done, len(records))
    folders.data.mkdir(parents=True, exist_ok=True)
    np.savez(folders.images, images=np.stack(images), owner=np.asarray(owner, dtype=np.int32))
    folders.manifest.write_text(json.dumps(records, indent=0))
    log.info("cached %d crops from %d files", len(images), len(records))


def load(folders: paths.Folders = paths.DEFAULT) -> tuple[np.ndarray, list[dict], list[dict]]:
    """The cached crops, one manifest record per crop, and the list of source records."""
    data = np.load(folders.images)
    records = json.loads(folders.manifest.read_text())
    return data["images"], [records[i] for i in data["owner"]], records
