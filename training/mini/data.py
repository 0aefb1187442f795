"""Tensors and batches drawn from the cached crops (nothing is decoded during training)."""

import numpy as np
import torch

from . import paths, prepare

GROUPS = ("clipart", "photo", "wallpaper")


class Crops:
    """The cached 64x64 crops split into train and held-out test, with captions and groups."""

    def __init__(self, folders: paths.Folders = paths.DEFAULT) -> None:
        images, rows, _ = prepare.load(folders)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        self.captions = [r["caption"] for r in rows]
        self.groups = np.asarray([GROUPS.index(r["group"]) for r in rows])
        test = np.asarray([r["split"] == "test" for r in rows])
        self.train_index = np.flatnonzero(~test)
        self.test_index = np.flatnonzero(test)

    def pixels(self, index: np.ndarray) -> torch.Tensor:
        """Float images in [-1, 1], the range the VAE works in."""
        return self.images[torch.as_tensor(index)].float().div(127.5).sub(1.0)

    def test_by_group(self, per_group: int) -> dict[str, np.ndarray]:
        """A fixed subset of held-out rows for each group (evenly spaced, so it is reproducible)."""
        subsets = {}
        for g, name in enumerate(GROUPS):
            rows = self.test_index[self.groups[self.test_index] == g]
            take = np.linspace(0, len(rows) - 1, min(per_group, len(rows))).round().astype(int)
            subsets[name] = rows[np.unique(take)]
        return subsets


def draw_rows(index: np.ndarray, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` entries of ``index`` drawn uniformly with replacement, as int64 (count,).

    They come from the training generator, whose state the checkpoint saves, so a resumed run
    draws the same batches as an uninterrupted one.
    """
    return torch.as_tensor(index)[torch.randint(len(index), (count,), generator=generator)]


def random_crop_flip(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` crop per image and a random horizontal flip (both keep real pixels)."""
    n, _, h, w = batch.shape
    if size < h:
        tops = torch.randint(0, h - size + 1, (n,), generator=generator)
        lefts = torch.randint(0, w - size + 1, (n,), generator=generator)
        batch = torch.stack(
            [
                image[:, top : top + size, left : left + size]
                for image, top, left in zip(batch, tops.tolist(), lefts.tolist(), strict=True)
            ]
        )
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)
