"""Reading every common kind of image correctly, and writing without losing anything."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from mimicshield.imagefiles import (
    ImageFileError,
    declared_size,
    read_back,
    read_image,
    read_mask,
    write_image,
)


def _save(path, image, **options):
    image.save(path, **options)
    return path


def _gradient(width=24, height=20):
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=2)


def test_rgb_reads_exactly(tmp_path):
    array = _gradient()
    loaded = read_image(_save(tmp_path / "a.png", Image.fromarray(array)))
    assert loaded.pixels.shape == (3, 20, 24) and loaded.alpha is None
    assert np.array_equal((loaded.pixels * 255).round().byte().permute(1, 2, 0).numpy(), array)


def test_rgba_alpha_is_kept_untouched_on_write(tmp_path):
    rgba = np.dstack([_gradient(), np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)])
    loaded = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert torch.equal(loaded.alpha[0], torch.from_numpy(rgba[..., 3]))
    levels = (loaded.pixels * 255).round().byte()
    write_image(tmp_path / "out.png", levels, loaded)
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGBA"
        assert np.array_equal(np.asarray(written), rgba)


def test_palette_with_transparency_becomes_rgba(tmp_path):
    image = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    loaded = read_image(_save(tmp_path / "p.png", image, transparency=0))
    expected = np.asarray(image.convert("RGBA"))
    assert loaded.alpha is not None and np.array_equal(loaded.alpha[0].numpy(), expected[..., 3])
    assert np.array_equal(
        (loaded.pixels * 255).round().byte().permute(1, 2, 0).numpy(), expected[..., :3]
    )


def test_grayscale_becomes_gray_rgb(tmp_path):
    gray = _gradient()[..., 0]
    loaded = read_image(_save(tmp_path / "g.png", Image.fromarray(gray, "L")))
    assert torch.equal(loaded.pixels[0], loaded.pixels[2])
    assert torch.equal((loaded.pixels[1] * 255).round().byte(), torch.from_numpy(gray))


def test_sixteen_bit_gray_is_scaled_not_truncated(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    loaded = read_image(_save(tmp_path / "g16.png", Image.fromarray(values)))
    expected = torch.tensor([0, 257, 32768, 65535], dtype=torch.float64) / 65535
    torch.testing.assert_close(loaded.pixels[0, 0].double(), expected, atol=1e-7, rtol=0)


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red ink
    loaded = read_image(_save(tmp_path / "c.jpg", cmyk, quality=100))
    red, green, blue = loaded.pixels.mean(dim=(1, 2)).tolist()
    assert red > 0.9 and green < 0.1 and blue < 0.1


def test_exif_orientation_is_applied_and_exif_and_icc_are_kept(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = _save(
        tmp_path / "o.jpg",
        Image.fromarray(_gradient(24, 20)),
        exif=exif,
        icc_profile=icc,
        quality=95,
    )
    loaded = read_image(path)
    assert loaded.size == (24, 20)  # displayed: width and height swapped
    write_image(tmp_path / "o.png", (loaded.pixels * 255).round().byte(), loaded)
    with Image.open(tmp_path / "o.png") as written:
        assert written.info.get("icc_profile") == icc
        tags = written.getexif()
        assert tags.get(0x010F) == "TestCam" and tags.get(0x0112, 1) == 1


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"hello, not an image", "not an image"), (None, "no such file")],
)
def test_unreadable_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageFileError, match=message) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_truncated_file_is_named(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_gradient(64, 64)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageFileError, match="corrupt or truncated"):
        read_image(path)


def test_too_large_image_names_the_limit(tmp_path):
    path = _save(tmp_path / "big.png", Image.new("RGB", (40, 30)))
    with pytest.raises(ImageFileError, match="limit of 1000 pixels"):
        read_image(path, max_pixels=1000)


def test_sizes_are_checked_before_decoding_and_bombs_are_refused_by_name(tmp_path, png_declaring):
    bomb = png_declaring(tmp_path / "bomb.png", 30_000, 30_000)  # 900 million pixels
    for reader in (read_image, declared_size):
        with pytest.raises(ImageFileError, match="bomb.png: declares more pixels than the limit"):
            reader(bomb)
    with pytest.raises(ImageFileError, match=r"is 300×200 pixels, more than the limit of 1000"):
        read_image(png_declaring(tmp_path / "wide.png", 300, 200), max_pixels=1000)
    # A caller who allows that many pixels gets the header read, nothing decoded.
    assert declared_size(bomb, max_pixels=10**9) == (30_000, 30_000)


def test_write_refuses_the_source_and_leaves_no_partial_files(tmp_path):
    path = _save(tmp_path / "a.png", Image.fromarray(_gradient()))
    before = path.read_bytes()
    loaded = read_image(path)
    with pytest.raises(ImageFileError, match="refusing to overwrite"):
        write_image(path, torch.zeros(3, 20, 24, dtype=torch.uint8), loaded)
    assert path.read_bytes() == before
    with pytest.raises(ImageFileError, match="could not be written"):
        write_image(
            tmp_path / "missing-dir" / "x.png", torch.zeros(3, 20, 24, dtype=torch.uint8), loaded
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_full_disk_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    loaded = read_image(_save(tmp_path / "a.png", Image.fromarray(_gradient())))
    out = tmp_path / "out"
    out.mkdir()

    def no_space(self, fp, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    with pytest.raises(ImageFileError, match="No space left on device"):
        write_image(out / "a.png", torch.zeros(3, 20, 24, dtype=torch.uint8), loaded)
    assert list(out.iterdir()) == []


def test_read_back_and_mask(tmp_path):
    path = _save(tmp_path / "m.png", Image.fromarray(np.array([[0, 255]], dtype=np.uint8), "L"))
    assert read_mask(path).tolist() == [[[[0.0, 1.0]]]]
    assert read_back(path).shape == (3, 1, 2)
