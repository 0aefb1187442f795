"""The shared tensor helpers: checks, random draws that depend on the seed only, the Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from mimicshield.tensors import (
    check_guidance,
    check_images,
    check_pair,
    check_positive,
    check_range,
    check_strength,
    draw_device,
    gaussian_kernel1d,
    rand,
    randint,
    randn,
    separable_filter,
)

#: (device, dtype) targets; "meta" stands in for an accelerator where there is none.
TARGETS = [("cpu", torch.float64), ("meta", torch.float16)]
if torch.cuda.is_available():
    TARGETS.append(("cuda", torch.bfloat16))

DRAWS = {
    "randn": lambda generator, **target: randn((2, 3, 5), generator, **target),
    "rand": lambda generator, **target: rand((2, 3, 5), generator, **target),
    "randint": lambda generator, device=None, dtype=None: randint(
        -3, 7, (2, 3, 5), generator, device=device
    ),
}


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            lambda: check_range(7.5, "quality", 1, 100, whole=True),
            "quality must be a whole number, got 7.5",
        ),
        (lambda: check_range(True, "factor", 0, 1), "factor must be a number, got True"),
        (lambda: check_range(float("nan"), "std", 0, 255), "std must be a number, got nan"),
        (
            lambda: check_range(0, "factor", 0, 1, low_open=True),
            r"factor must lie in \(0, 1\], got 0",
        ),
        (
            lambda: check_range(math.inf, "sigma", 0, math.inf),
            r"sigma must lie in \[0, inf\), got inf",
        ),
        (lambda: check_positive(0, "steps"), "steps must be a whole number ≥ 1, got 0"),
        (lambda: check_positive(2.0, "steps"), "steps must be a whole number ≥ 1, got 2.0"),
        (lambda: check_strength(1.5), r"strength must lie in \(0, 1\], got 1.5"),
        (lambda: check_guidance(-1.0), r"guidance_scale must lie in \[0, inf\), got -1"),
        (
            lambda: check_images(torch.rand(1, 4, 8, 8)),
            r"images must be a \(B, 3, H, W\) tensor, got \(1, 4, 8, 8\)",
        ),
        (
            lambda: check_images(torch.rand(8, 8), channels=None),
            r"must be a \(B, C, H, W\) tensor, got \(8, 8\)",
        ),
        (
            lambda: check_pair(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9), channels=None),
            r"same shape, got \(1, 1, 8, 8\) and \(1, 1, 8, 9\)",
        ),
    ],
)
def test_checks_name_the_expected_and_the_actual_value(check, message):
    with pytest.raises(ValueError, match=message):
        check()


def test_checks_accept_valid_values_of_any_number_type():
    check_range(np.float32(0.5), "factor", 0, 1, low_open=True)
    check_range(np.int64(75), "quality", 1, 100, whole=True)
    check_positive(np.int64(3), "steps")
    check_strength(1)
    check_guidance(0.0)
    check_pair(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), channels=None)


@pytest.mark.parametrize("name", DRAWS)
def test_the_same_seed_gives_the_same_draw(name):
    draw = DRAWS[name]
    assert torch.equal(draw(_generator(0)), draw(_generator(0)))
    assert not torch.equal(draw(_generator(0)), draw(_generator(1)))


@pytest.mark.parametrize("name", DRAWS)
@pytest.mark.parametrize(("device", "dtype"), TARGETS)
def test_the_draw_lands_on_the_target_and_does_not_depend_on_it(name, device, dtype):
    reference_generator, generator = _generator(), _generator()
    reference = DRAWS[name](reference_generator)
    drawn = DRAWS[name](generator, device=device, dtype=dtype)
    expected_dtype = torch.int64 if name == "randint" else dtype
    assert (drawn.device.type, drawn.dtype) == (device, expected_dtype)
    if device != "meta":
        assert torch.equal(drawn.cpu(), reference.to(expected_dtype))
    # The generator moved on by the same amount whatever the target.
    assert torch.equal(generator.get_state(), reference_generator.get_state())


def test_draws_without_a_generator_are_made_on_the_cpu():
    assert draw_device(None) == torch.device("cpu")
    assert randn((3,), None).device == torch.device("cpu")
    assert rand((3,), None, dtype=torch.float64).dtype == torch.float64


def test_randint_stays_in_its_half_open_range():
    values = randint(-3, 7, (1000,), _generator())
    assert values.dtype == torch.int64
    assert int(values.min()) == -3 and int(values.max()) == 6


@pytest.mark.parametrize(("size", "sigma"), [(1, 1.0), (9, 1.0), (11, 1.5), (25, 3.0)])
def test_gaussian_kernel_is_scipys_normalised_window(size, sigma):
    taps = gaussian_kernel1d(size, sigma)
    window = torch.from_numpy(scipy.signal.windows.gaussian(size, std=sigma))
    assert taps.dtype == torch.float64
    assert torch.allclose(taps, window / window.sum(), rtol=0, atol=1e-15)
    assert torch.equal(gaussian_kernel1d(size, sigma, dtype=torch.float32), taps.float())


@pytest.mark.parametrize("size", [0, 4, -3])
def test_gaussian_kernel_refuses_an_even_or_empty_size(size):
    with pytest.raises(ValueError, match=f"kernel size must be odd and ≥ 1, got {size}"):
        gaussian_kernel1d(size, 1.0)


def test_separable_filter_is_the_2d_convolution_with_the_outer_product():
    images = torch.rand(2, 3, 12, 15, generator=_generator(), dtype=torch.float64)
    taps = gaussian_kernel1d(5, 1.2)
    kernel = torch.outer(taps, taps).expand(3, 1, 5, 5)
    filtered = separable_filter(images, taps)
    assert filtered.shape == (2, 3, 8, 11)
    assert torch.allclose(filtered, F.conv2d(images, kernel, groups=3), rtol=0, atol=1e-14)
