"""Reading every common kind of image correctly, and writing without losing anything.

Frames, pages, 16 bits and metadata included.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageSequence, PngImagePlugin

from mimicshield.budget import quantise_within_budget
from mimicshield.imagefiles import (
    ImageFileError,
    declared_size,
    default_output_format,
    plan_output,
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
        dpi=(300, 72),
    )
    loaded = read_image(path)
    assert loaded.size == (24, 20)  # displayed: width and height swapped
    assert loaded.metadata.dpi == (72.0, 300.0)  # and so are the horizontal and vertical DPI
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


def test_an_encoder_that_refuses_the_size_is_a_named_write_error(tmp_path):
    path = _save(tmp_path / "wide.png", Image.new("RGB", (16400, 1)))  # WebP: ≤ 16383 a side
    loaded = read_image(path)
    levels = torch.zeros(1, 3, 1, 16400, dtype=torch.uint8)
    with pytest.raises(ImageFileError, match=r"wide\.webp: could not be written \("):
        write_image(tmp_path / "wide.webp", levels, loaded, plan_output(loaded, "webp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.png"]


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


# ---------------------------------------------------------------- frames, bit depth, metadata

_DURATIONS = [40, 120, 300]


def _frames(count=3, size=(24, 20)):
    """``count`` distinct RGB pictures."""
    return [
        Image.fromarray(np.roll(_gradient(*size), 40 * index, axis=1)) for index in range(count)
    ]


def _animation(path, image_format, **options):
    first, *rest = _frames()
    first.save(
        path,
        format=image_format,
        save_all=True,
        append_images=rest,
        duration=_DURATIONS,
        loop=3,
        **options,
    )
    return path


def _png_16bit_colour(path, samples):
    """A 16-bit RGB PNG (H, W, 3) uint16, written chunk by chunk: Pillow cannot write one."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    height, width, _ = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _timing(path):
    """(frame count, durations, loop) as Pillow reads them from a file."""
    with Image.open(path) as image:
        durations = []
        for frame in ImageSequence.Iterator(image):
            frame.load()  # WebP reports a frame's duration once it is decoded
            durations.append(frame.info.get("duration"))
        return image.n_frames, durations, image.info.get("loop")


def _identity_write(loaded, path, image_format=None, **options):
    """Write a file's own levels back (no perturbation): what is kept is then exact."""
    plan = plan_output(loaded, image_format, **options)
    levels = quantise_within_budget(loaded.frames, loaded.frames, 0.0, levels=plan.levels)
    write_image(path, levels, loaded, plan)
    return plan


@pytest.mark.parametrize(
    "name, image_format, options, written_as",
    [
        ("a.gif", "GIF", {}, "png"),
        ("a.webp", "WEBP", {"lossless": True}, "webp"),
        ("a.png", "PNG", {}, "png"),
    ],
)
def test_animations_keep_frames_durations_and_loop(
    tmp_path, name, image_format, options, written_as
):
    loaded = read_image(_animation(tmp_path / name, image_format, **options))
    assert loaded.frame_count == 3 and loaded.animation.loop == 3
    assert loaded.animation.durations_ms == tuple(map(float, _DURATIONS))
    assert default_output_format(tmp_path / name) == written_as
    out = tmp_path / f"out.{written_as}"
    plan = _identity_write(loaded, out)
    assert plan.image_format == written_as
    count, durations, loop = _timing(out)
    assert (count, [round(d) for d in durations], loop) == (3, _DURATIONS, 3)
    assert torch.equal(read_image(out).frames, loaded.frames)


def test_gif_disposal_is_carried_to_apng(tmp_path):
    first, *rest = _frames()
    path = tmp_path / "d.gif"
    first.save(path, save_all=True, append_images=rest, duration=_DURATIONS, disposal=[1, 2, 1])
    loaded = read_image(path)
    assert loaded.animation.disposal == ("none", "background", "none")
    assert loaded.animation.loop is None  # no loop extension: plays once
    _identity_write(loaded, tmp_path / "d.png")
    again = read_image(tmp_path / "d.png")
    assert again.animation.disposal == ("none", "background", "none")
    assert again.animation.loop == 1


def test_gif_palette_cannot_hold_a_protection_budget():
    """Why GIF inputs are written as PNG: a palette cannot hold a protection's budget.

    Re-quantising ±4/255 noise to 256 colours moves pixels by far more than 4/255 (measured
    26–47/255 for budgets 4–16).
    """
    original = np.asarray(Image.fromarray(_gradient(64, 64)).quantize(256).convert("RGB"))
    signs = np.random.default_rng(0).choice([-4, 4], original.shape)
    protected = np.clip(original.astype(int) + signs, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(protected).save(buffer, format="GIF")
    with Image.open(buffer) as reread:
        saved = np.asarray(reread.convert("RGB")).astype(int)
    assert np.abs(saved - original).max() > 4


def test_multi_page_tiff_keeps_every_page(tmp_path):
    first, *rest = _frames()
    path = tmp_path / "pages.tiff"
    first.save(path, save_all=True, append_images=rest)
    loaded = read_image(path)
    assert loaded.frame_count == 3 and loaded.animation is None
    _identity_write(loaded, tmp_path / "out.tiff")
    with Image.open(tmp_path / "out.tiff") as written:
        assert written.n_frames == 3
    assert torch.equal(read_image(tmp_path / "out.tiff").frames, loaded.frames)


def test_multi_picture_jpeg_gives_its_primary_picture_only(tmp_path, caplog):
    # What phones write: the photo, then an HDR gain map at a quarter of its size.
    photo, gain_map = _frames(2, size=(48, 40))
    path = _save(
        tmp_path / "phone.jpg",
        photo,
        format="MPO",
        save_all=True,
        append_images=[gain_map.resize((24, 20))],
    )
    with Image.open(path) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
        primary = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1) / 255
    with caplog.at_level("WARNING", logger="mimicshield.imagefiles"):
        loaded = read_image(path)
    assert loaded.frame_count == 1 and loaded.animation is None and loaded.lossy
    assert torch.equal(loaded.frames[0], primary)
    assert "phone.jpg" in caplog.text and "only the primary one" in caplog.text
    plan = _identity_write(loaded, tmp_path / "out.png")
    assert plan.image_format == "png"
    with Image.open(tmp_path / "out.png") as written:
        assert getattr(written, "n_frames", 1) == 1 and written.size == (48, 40)


def test_sixteen_bit_gray_png_stays_sixteen_bit_gray(tmp_path):
    values = (np.arange(20 * 24, dtype=np.uint32).reshape(20, 24) * 137 % 65536).astype(np.uint16)
    loaded = read_image(_save(tmp_path / "g16.png", Image.fromarray(values)))
    assert loaded.bit_depth == 16 and loaded.gray
    plan = _identity_write(loaded, tmp_path / "out.png")
    assert (plan.image_format, plan.bit_depth, plan.gray) == ("png", 16, True)
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode.startswith("I;16")
        assert np.array_equal(np.asarray(written), values)


def test_sixteen_bit_colour_is_read_exactly_and_written_as_sixteen_bit_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    samples = np.random.default_rng(0).integers(0, 65536, (20, 24, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", samples, photometric="rgb", compression="zlib")
    _png_16bit_colour(tmp_path / "c16.png", samples)
    for name in ("c16.tif", "c16.png"):
        loaded = read_image(tmp_path / name)
        assert loaded.bit_depth == 16 and not loaded.gray
        exact = (loaded.pixels.double() * 65535).round().permute(1, 2, 0).numpy()
        assert np.array_equal(exact, samples)
        assert default_output_format(tmp_path / name) == "tiff"  # no 16-bit colour PNG writer
        plan = _identity_write(loaded, tmp_path / f"{name}.out.tiff")
        assert (plan.image_format, plan.bit_depth) == ("tiff", 16)
        assert np.array_equal(tifffile.imread(tmp_path / f"{name}.out.tiff"), samples)


def _xmp():
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
        b'dc:creator="Ada"/></rdf:RDF></x:xmpmeta>'
    )


def test_jpeg_metadata_is_carried_to_png_and_stripped_except_icc(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = _save(
        tmp_path / "o.jpg",
        Image.fromarray(_gradient()),
        exif=exif,
        icc_profile=icc,
        xmp=_xmp(),
        dpi=(300, 300),
        quality=95,
    )
    loaded = read_image(path)
    assert loaded.lossy and loaded.size == (24, 20)
    assert loaded.metadata.kinds() == ["exif", "icc_profile", "xmp", "dpi"]
    plan = _identity_write(loaded, tmp_path / "kept.png")
    assert plan.metadata_report == {"kept": loaded.metadata.kinds(), "stripped": [], "dropped": []}
    with Image.open(tmp_path / "kept.png") as kept:
        assert kept.info["icc_profile"] == icc and "Ada" in str(kept.info["xmp"])
        assert kept.getexif().get(0x010F) == "TestCam" and kept.getexif().get(0x0112, 1) == 1
        assert tuple(round(value) for value in kept.info["dpi"]) == (300, 300)
    plan = _identity_write(loaded, tmp_path / "bare.png", strip_metadata=True)
    assert plan.metadata_report["kept"] == ["icc_profile"]
    assert plan.metadata_report["stripped"] == ["exif", "xmp", "dpi"]
    with Image.open(tmp_path / "bare.png") as bare:
        assert bare.info.get("icc_profile") == icc
        assert not len(bare.getexif()) and "xmp" not in bare.info and "dpi" not in bare.info


def test_png_text_and_dpi_are_kept_and_dropped_by_name_where_the_format_lacks_them(tmp_path):
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("Author", "Ada")
    chunks.add_itxt("Title", "Ünïcode")
    chunks.add_text("Comment", "compressed", zip=True)
    path = _save(tmp_path / "t.png", Image.fromarray(_gradient()), pnginfo=chunks, dpi=(150, 150))
    loaded = read_image(path)
    expected = {"Author": "Ada", "Title": "Ünïcode", "Comment": "compressed"}
    assert loaded.metadata.text == expected
    _identity_write(loaded, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as written:
        assert written.text == expected
        assert tuple(round(value) for value in written.info["dpi"]) == (150, 150)
    plan = _identity_write(loaded, tmp_path / "out.webp", "webp")
    assert plan.metadata_report == {"kept": [], "stripped": [], "dropped": ["text", "dpi"]}


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("a.bmp", {}, "png"),
        ("a.jpg", {"quality": 90}, "png"),
        ("a.webp", {"quality": 80}, "png"),  # lossy WebP
        ("b.webp", {"lossless": True}, "webp"),
        ("a.tiff", {}, "tiff"),
        ("a.gif", {}, "png"),
        ("a.png", {}, "png"),
    ],
)
def test_default_output_formats(tmp_path, name, options, expected):
    path = _save(tmp_path / name, Image.fromarray(_gradient()), **options)
    assert default_output_format(path) == expected
    assert plan_output(read_image(path)).image_format == expected


def test_jpeg_output_refuses_transparency_and_frames(tmp_path):
    rgba = Image.fromarray(_gradient()).convert("RGBA")
    with pytest.raises(ImageFileError, match="transparency, which JPEG cannot hold"):
        plan_output(read_image(_save(tmp_path / "a.png", rgba)), "jpeg")
    with pytest.raises(ImageFileError, match="3 frames, which JPEG cannot hold"):
        plan_output(read_image(_animation(tmp_path / "b.gif", "GIF")), "jpeg")
