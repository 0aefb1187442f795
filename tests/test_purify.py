"""Purifiers: contracts over every name, identities, known behaviour, seeded randomness, parsing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from diffusers import DDIMScheduler

from mimicshield.purify import (
    PURIFIERS,
    BlurPurifier,
    DiffusionPurifier,
    JpegPurifier,
    NoisePurifier,
    diffusion_purify,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    parse_purifier,
    resize,
)

NAMES = ["none", "jpeg75", "resize0.5", "blur1", "noise8", "diffpure0.05"]


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a.double() - b.double()).pow(2).mean()))


@pytest.mark.parametrize("name", NAMES)
def test_every_purifier_keeps_shape_dtype_range_and_leaves_the_input_alone(
    name, images, tiny_model, seeded
):
    purifier = parse_purifier(name)
    before = images.clone()
    purified = purifier(images, generator=seeded(), model=tiny_model)
    assert purified.shape == images.shape and purified.dtype == images.dtype
    assert purified.min() >= 0 and purified.max() <= 1
    assert torch.equal(images, before)
    assert parse_purifier(purifier.name) == purifier, "the name reads back to the same purifier"


@pytest.mark.parametrize("name", ["noise8", "diffpure0.05"])
def test_random_purifiers_are_reproducible_from_the_seed(name, images, tiny_model, seeded):
    purifier = parse_purifier(name)
    first = purifier(images, generator=seeded(3), model=tiny_model)
    again = purifier(images, generator=seeded(3), model=tiny_model)
    other = purifier(images, generator=seeded(4), model=tiny_model)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_none_is_the_identity(images):
    assert torch.equal(parse_purifier("none")(images), images)


# ------------------------------------------------------------------------ JPEG


def test_jpeg_at_quality_100_is_close_and_lower_quality_loses_more(seeded):
    # Smooth colours: Pillow's default 4:2:0 chroma subsampling loses little even at 100.
    coarse = torch.rand(2, 3, 4, 5, generator=seeded(7))
    images = torch.nn.functional.interpolate(coarse, size=(32, 40), mode="bilinear")
    best, worst = jpeg(images, 100), jpeg(images, 10)
    assert psnr_db(best, images) > 35
    assert psnr_db(worst, images) < psnr_db(best, images) - 5
    # Decoded files hold whole 8-bit levels.
    assert torch.allclose(best * 255, (best * 255).round(), atol=1e-4)


def test_jpeg_matches_a_pillow_round_trip(images):
    import io

    from PIL import Image

    array = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=50)
    expected = np.asarray(Image.open(buffer)).astype(np.float32) / 255
    assert np.array_equal(jpeg(images, 50)[0].permute(1, 2, 0).numpy(), expected)


# ------------------------------------------------------------------------ resize


def test_resize_by_one_is_the_identity_and_constants_stay_constant(images):
    assert torch.allclose(resize(images, 1.0), images, atol=1e-6)
    constant = torch.full((1, 3, 16, 20), 0.3)
    assert torch.allclose(resize(constant, 0.37), constant, atol=1e-6)


def test_resize_removes_detail_finer_than_the_small_image():
    checkerboard = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float()
    images = checkerboard.expand(1, 3, 16, 16)
    # Antialiased halving low-passes the checkerboard to flat grey (the border rows and columns
    # renormalise a truncated filter, so they come within 0.02).
    halved = resize(images, 0.5)
    assert torch.allclose(halved[..., 3:-3, 3:-3], torch.full((1, 3, 10, 10), 0.5), atol=1e-6)
    assert (halved - 0.5).abs().max() < 0.02


# ------------------------------------------------------------------------ blur


def test_blur_matches_scipy_gaussian_filter_with_nearest_edges(images):
    for sigma in (0.6, 1.0, 2.5):
        expected = scipy.ndimage.gaussian_filter(
            images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest"
        )
        assert np.allclose(gaussian_blur(images, sigma).numpy(), expected, atol=1e-6)


def test_blur_keeps_constants_and_sigma_zero_is_the_identity(images):
    constant = torch.full((2, 3, 9, 7), 0.7)
    assert torch.allclose(gaussian_blur(constant, 3.0), constant, atol=1e-6)
    assert torch.equal(gaussian_blur(images, 0.0), images)


# ------------------------------------------------------------------------ noise


def test_noise_std_is_in_255_units_and_zero_is_the_identity(seeded):
    grey = torch.full((4, 3, 64, 64), 0.5)
    noisy = gaussian_noise(grey, 8, generator=seeded())
    assert float((noisy - grey).std()) == pytest.approx(8 / 255, rel=0.03)
    assert torch.equal(gaussian_noise(grey, 0, generator=seeded()), grey)


def test_noise_on_a_generator_gives_the_same_result_on_every_device(images, seeded):
    expected = images + torch.randn(images.shape, generator=seeded(5)) * (4 / 255)
    assert torch.allclose(gaussian_noise(images, 4, generator=seeded(5)), expected.clamp(0, 1))


# ------------------------------------------------------------------------ diffusion purification


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_v_model"])
def test_diffusion_purification_is_ddim_from_t_to_zero(model_name, images, request, seeded):
    """The same steps with diffusers' DDIMScheduler (η = 0, final ᾱ = 1) give the same image."""
    model = request.getfixturevalue(model_name)
    purified = diffusion_purify(
        images, model, strength=0.05, num_inference_steps=50, generator=seeded(2)
    )
    scheduler = DDIMScheduler.from_config(model.scheduler.config, set_alpha_to_one=True)
    scheduler.set_timesteps(50)  # stride 1000 // 50 = 20
    with torch.no_grad():
        latents = model.encode(images)
        noise = torch.randn(latents.shape, generator=seeded(2))
        start = torch.full((2,), 49, dtype=torch.long)
        latents = model.add_noise(latents, noise, start)
        embeddings = model.embed(["", ""])
        for timestep in (49, 29, 9):
            batch = torch.full((2,), timestep, dtype=torch.long)
            output = model.predict(latents, batch, embeddings)
            latents = scheduler.step(output, timestep, latents, eta=0.0).prev_sample
        expected = model.decode(latents)
    assert torch.allclose(purified, expected, atol=1e-5)


def test_diffusion_purification_needs_the_model(images):
    with pytest.raises(ValueError, match="'diffpure0.1' needs the model"):
        parse_purifier("diffpure0.1")(images)


def test_diffusion_purification_handles_sizes_off_the_vae_grid(tiny_model, seeded):
    odd = torch.rand(1, 3, 15, 21, generator=seeded(6))
    assert diffusion_purify(odd, tiny_model, strength=0.01, generator=seeded()).shape == odd.shape


# ------------------------------------------------------------------------ names and settings


def test_names_parse_into_configured_purifiers():
    assert parse_purifier("jpeg75") == JpegPurifier(quality=75)
    assert parse_purifier(" Blur1.0 ") == BlurPurifier(sigma=1.0)
    assert parse_purifier("noise8") == NoisePurifier(std=8.0)
    assert parse_purifier("diffpure0.1") == DiffusionPurifier(strength=0.1)
    assert parse_purifier("resize0.5").name == "resize0.5"
    assert parse_purifier(BlurPurifier(sigma=0.1234567).name) == BlurPurifier(sigma=0.1234567)
    assert set(PURIFIERS) == {"none", "jpeg", "resize", "blur", "noise", "diffpure"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sharpen2", "unknown purifier 'sharpen2'; known forms: none, jpeg<quality 1-100>"),
        ("", "unknown purifier ''"),
        ("jpegabc", r"'jpeg' must be followed by a whole number <quality 1-100>, got 'jpegabc'"),
        ("jpeg", r"'jpeg' must be followed by a whole number <quality 1-100>, got 'jpeg'"),
        ("jpeg7.5", "a whole number <quality 1-100>, got 'jpeg7.5'"),
        ("jpeg0", r"JPEG quality must lie in \[1, 100\], got 0"),
        ("resize1.5", r"resize factor must lie in \(0, 1\], got 1.5"),
        ("resize0", r"resize factor must lie in \(0, 1\], got 0"),
        ("blur-1", r"blur sigma must lie in \[0, inf\), got -1"),
        ("noisenan", "noise std must be a number, got nan"),
        ("diffpure2", r"strength must lie in \(0, 1\], got 2"),
        ("none3", "'none' takes no parameter, got 'none3'"),
    ],
)
def test_bad_names_give_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_purifier(name)


def test_functions_validate_their_inputs(images, tiny_model):
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got values in \[0, 2\]"):
        resize(images * 2, 0.5)
    with pytest.raises(ValueError, match=r"must be a \(B, 3, H, W\) tensor, got \(3, 16, 20\)"):
        jpeg(images[0], 90)
    with pytest.raises(ValueError, match=r"num_inference_steps must lie in \[1, 1000\], got 0"):
        diffusion_purify(images, tiny_model, strength=0.1, num_inference_steps=0)
