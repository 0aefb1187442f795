"""The shared tensor helpers: random draws that depend on the seed only, the Gaussian filter."""

from __future__ import annotations

import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from mimicshield.tensors import (
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
