"""Fetch the image sources from package registries and list usable files with honest captions.

Sources (all fetched by package name, nothing from the open web):

- Debian ``openclipart-png``: clip art, captioned from the file name and its category folders.
- Debian ``plasma-workspace-wallpapers``, ``gnome-backgrounds``, ``desktop-base``: wallpapers,
  captioned with the wallpaper's name.
- The photos bundled inside scikit-image's ``skimage/data`` folder, captioned from the
  descriptions in scikit-image's own docstrings.

Each record carries a ``group`` (``clipart``, ``photo`` or ``wallpaper``) so that quality can be
reported per kind of image, and a ``key`` that identifies the underlying file (symlinked clip art
is listed once) so that the held-out split is by file.
"""

import logging
import re
import subprocess
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)

# Exact versions (Debian 12 "bookworm"), as listed in the model card: a newer upload could add,
# drop or rename images and so change the data set. apt fails if a version is no longer offered.
PACKAGES = {
    "openclipart-png": "1:0.18+dfsg-19",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "gnome-backgrounds": "43.1-1",
    "desktop-base": "12.0.6+nmu1~deb12u1",
}

# Captions for scikit-image's bundled photos, taken from the docstrings of skimage.data.
# Synthetic test patterns, microscopy masks and drawings in that folder are left out.
SKIMAGE_PHOTOS = {
    "astronaut.png": "a photo of an astronaut",
    "chelsea.png": "a photo of a cat",
    "coffee.png": "a photo of a cup of coffee",
    "hubble_deep_field.jpg": "a photo of galaxies in deep space",
    "ihc.png": "a photo of a stained tissue under a microscope",
    "motorcycle_left.png": "a photo of a motorcycle",
    "retina.jpg": "a photo of a human retina",
    "rocket.jpg": "a photo of a rocket launch",
    "camera.png": "a black and white photo of a man with a camera",
    "moon.png": "a black and white photo of the moon",
    "coins.png": "a black and white photo of coins",
    "brick.png": "a black and white photo of a brick wall",
    "grass.png": "a black and white photo of grass",
    "gravel.png": "a black and white photo of gravel",
}

# Held out from training, by file, to measure quality on unseen images.
HELD_OUT_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def deb_pattern(package: str, version: str) -> str:
    """The file name ``apt-get download`` gives that version (it writes an epoch's ':' as %3a)."""
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


def fetch_packages(folders: paths.Folders = paths.DEFAULT) -> None:
    """Download and unpack the pinned Debian packages once (``apt-get download`` + ``dpkg -x``)."""
    folders.debs.mkdir(parents=True, exist_ok=True)
    folders.extract.mkdir(parents=True, exist_ok=True)  # dpkg -x creates one level only
    for package, version in PACKAGES.items():
        target = folders.extract / package
        if target.exists():
            continue
        if not list(folders.debs.glob(deb_pattern(package, version))):
            log.info("downloading %s %s", package, version)
            subprocess.run(
                ["apt-get", "download", f"{package}={version}"], cwd=folders.debs, check=True
            )
        (deb,) = folders.debs.glob(deb_pattern(package, version))
        tmp = target.with_suffix(".partial")
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(target)


def _words(text: str) -> list[str]:
    """Split a file or folder name into lower-case words (snake_case, kebab-case, CamelCase)."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return [w for w in re.split(r"[^a-zA-Z]+", text.lower()) if len(w) > 1]


def _clipart(extract: Path) -> list[dict]:
    root = extract / "openclipart-png" / "usr" / "share" / "openclipart" / "png"
    records, seen = [], set()
    for file in sorted(root.rglob("*.png")):
        real = file.resolve()
        if file.is_symlink() or real in seen:
            continue
        seen.add(real)
        category = ", ".join(" ".join(_words(part)) for part in file.relative_to(root).parent.parts)
        name = " ".join(_words(file.stem))
        if not name:
            continue
        caption = f"clip art of {name}" + (f", {category}" if category else "")
        records.append(
            {
                "path": str(real),
                "key": str(real.relative_to(root)),
                "group": "clipart",
                "caption": caption,
            }
        )
    return records


def _largest(files: list[Path]) -> Path:
    return max(files, key=lambda f: f.stat().st_size)


def _wallpapers(extract: Path) -> list[dict]:
    records = []
    plasma = extract / "plasma-workspace-wallpapers" / "usr" / "share" / "wallpapers"
    for folder in sorted(p for p in plasma.iterdir() if p.is_dir()):
        name = " ".join(_words(folder.name))
        for variant, prefix in (("images", "a wallpaper"), ("images_dark", "a dark wallpaper")):
            files = [
                f
                for f in (folder / "contents" / variant).glob("*")
                if f.suffix.lower() in (".png", ".jpg")
            ]
            if files:
                records.append(
                    {
                        "path": str(_largest(files)),
                        "key": f"plasma/{folder.name}/{variant}",
                        "group": "wallpaper",
                        "caption": f"{prefix}, {name}",
                    }
                )
    gnome = extract / "gnome-backgrounds" / "usr" / "share" / "backgrounds" / "gnome"
    for file in sorted(gnome.glob("*.webp")):
        stem, _, shade = file.stem.rpartition("-")
        prefix = {"d": "a dark wallpaper", "l": "a light wallpaper"}.get(shade, "a wallpaper")
        records.append(
            {
                "path": str(file),
                "key": f"gnome/{file.name}",
                "group": "wallpaper",
                "caption": f"{prefix}, {' '.join(_words(stem or file.stem))}",
            }
        )
    themes = extract / "desktop-base" / "usr" / "share" / "desktop-base"
    for theme in sorted(themes.glob("*-theme")):
        files = list((theme / "grub").glob("grub-*.png"))
        if files:
            name = " ".join(_words(theme.name.removesuffix("-theme")))
            records.append(
                {
                    "path": str(_largest(files)),
                    "key": f"desktop-base/{theme.name}",
                    "group": "wallpaper",
                    "caption": f"a wallpaper, {name} theme",
                }
            )
    return records


def _photos() -> list[dict]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [
        {"path": str(folder / name), "key": f"skimage/{name}", "group": "photo", "caption": caption}
        for name, caption in SKIMAGE_PHOTOS.items()
        if (folder / name).exists()
    ]


def list_sources(folders: paths.Folders = paths.DEFAULT) -> list[dict]:
    """All usable source files as records ``{path, key, group, caption}``, in a stable order."""
    return _clipart(folders.extract) + _wallpapers(folders.extract) + _photos()
