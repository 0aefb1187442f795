"""Metrics against independent implementations and known values (DESIGN §4, §6).

Networks that need pretrained weights (LPIPS backbones, CLIP) run as tiny random stand-ins;
CLIP goes through the real loader from a save_pretrained folder.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mimicshield.metrics import (
    MetricUnavailableError,
    SmallSampleWarning,
    clip_similarity,
    frechet_distance,
    frechet_feature_distance,
    gaussian_fit,
    latent_shift,
    load_clip,
    load_inception,
    load_lpips,
    load_metrics,
    lpips_distance,
    psnr,
    ssim,
)


def random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ PSNR and SSIM


def test_ssim_and_psnr_agree_with_scikit_image():
    images = random_images(3, 32, 40, seed=0)
    # Correlated references, so SSIM is far from 0 and the comparison is not trivial.
    references = (images + 0.2 * random_images(3, 32, 40, seed=1)).clamp(0, 1)
    ours_ssim, ours_psnr = ssim(images, references), psnr(images, references)
    for index in range(3):
        x, y = images[index].numpy(), references[index].numpy()
        expected_ssim = structural_similarity(
            x,
            y,
            channel_axis=0,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        expected_psnr = peak_signal_noise_ratio(y, x, data_range=1.0)
        assert abs(float(ours_ssim[index]) - expected_ssim) < 1e-4
        assert abs(float(ours_psnr[index]) - expected_psnr) < 1e-4


def test_ssim_of_an_image_with_itself_is_one_and_psnr_infinite(images):
    assert torch.allclose(ssim(images, images), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(psnr(images, images)).all()


def test_psnr_of_a_constant_offset_of_a_tenth_is_20_db():
    images = random_images(2, 16, 16, seed=2) * 0.9
    assert torch.allclose(psnr(images + 0.1, images), torch.full((2,), 20.0, dtype=torch.float64))


def test_image_quality_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\) and \(1, 3, 16, 17\)"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


# ------------------------------------------------------------------------ LPIPS


class TinyLpipsNetwork:
    """Two random conv + ReLU layers and random non-negative channel weights (a stand-in)."""

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
            self._weights = [torch.rand(4), torch.rand(5)]

    def features(self, images):
        first = torch.relu(self.conv1(images * 2 - 1))
        return [first, torch.relu(self.conv2(first))]

    @property
    def channel_weights(self):
        return self._weights


def hand_lpips(image: torch.Tensor, reference: torch.Tensor, network: TinyLpipsNetwork) -> float:
    """The paper's formula for one pair, written out with explicit loops over pixels."""
    total = 0.0
    pairs = zip(network.features(image[None]), network.features(reference[None]), strict=True)
    for layer, (first, second) in enumerate(pairs):
        first, second = first[0].double(), second[0].double()
        weights = network.channel_weights[layer].double()
        channels, height, width = first.shape
        layer_sum = 0.0
        for row in range(height):
            for column in range(width):
                a, b = first[:, row, column], second[:, row, column]
                a = a / (math.sqrt(float((a * a).sum())) + 1e-10)
                b = b / (math.sqrt(float((b * b).sum())) + 1e-10)
                layer_sum += float((weights * (a - b) ** 2).sum())
        total += layer_sum / (height * width)
    return total


def test_lpips_matches_the_formula_computed_by_hand(images):
    network = TinyLpipsNetwork()
    references = images.flip(-1)
    with torch.no_grad():
        distance = lpips_distance(images, references, network)
        expected = [hand_lpips(images[i], references[i], network) for i in range(2)]
    assert distance.shape == (2,)
    assert torch.allclose(distance.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_lpips_is_zero_on_identical_images_symmetric_and_positive_otherwise(images):
    network = TinyLpipsNetwork()
    others = random_images(2, 16, 20, seed=3)
    with torch.no_grad():
        assert torch.equal(lpips_distance(images, images, network), torch.zeros(2))
        forward = lpips_distance(images, others, network)
        backward = lpips_distance(others, images, network)
    assert (forward > 0).all()
    assert torch.allclose(forward, backward)


def test_lpips_refuses_weights_that_do_not_match_the_features(images):
    network = TinyLpipsNetwork()
    network._weights = [torch.rand(4), torch.rand(6)]
    with pytest.raises(ValueError, match=r"layer 1: expected channel weights of shape \(5,\)"):
        lpips_distance(images, images, network)


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed")
def test_load_lpips_without_the_package_says_what_to_install():
    with pytest.raises(MetricUnavailableError, match="pip install lpips"):
        load_lpips("alex")


def test_load_lpips_refuses_an_unknown_backbone():
    with pytest.raises(ValueError, match="alex, vgg, squeeze, got 'resnet'"):
        load_lpips("resnet")


def test_lpips_over_the_package_network_matches_the_package():
    lpips = pytest.importorskip("lpips")
    from mimicshield.metrics.lpips import LpipsPackageNetwork

    # A random backbone with the shipped linear weights: no download needed.
    module = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    images, references = random_images(2, 64, 64, seed=4), random_images(2, 64, 64, seed=5)
    with torch.no_grad():
        ours = lpips_distance(images, references, LpipsPackageNetwork(module))
        theirs = module(images, references, normalize=True).flatten()
    assert torch.allclose(ours, theirs, atol=1e-5)


# ------------------------------------------------------------------------ CLIP


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP vision tower with projection, written by save_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(config)
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_encoder(clip_dir):
    return load_clip(clip_dir)


def test_clip_loads_through_the_loader_and_gives_projected_embeddings(clip_encoder, images):
    assert clip_encoder.image_size == 32
    assert not clip_encoder.model.training
    assert not any(p.requires_grad for p in clip_encoder.model.parameters())
    with torch.no_grad():
        embeddings = clip_encoder(images)
    assert embeddings.shape == (2, 16) and embeddings.dtype == torch.float32


def test_clip_similarity_is_one_for_identical_images_and_in_range(clip_encoder, images):
    with torch.no_grad():
        same = clip_similarity(images, images, clip_encoder)
        other = clip_similarity(images, random_images(2, 16, 20, seed=6), clip_encoder)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    assert other.shape == (2,) and (other.abs() <= 1 + 1e-6).all()


def test_clip_preprocessing_matches_the_clip_image_processor(clip_encoder):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    smooth = torch.nn.functional.interpolate(random_images(1, 6, 8, seed=7), size=(48, 64))
    images = (smooth * 255).round() / 255
    array = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = processor(images=array, return_tensors="pt").pixel_values
    ours = clip_encoder.preprocess(images)
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    # The processor resamples in 8 bits with PIL, we in float: under one 8-bit level apart on
    # average (a level is 1/255/std ≈ 0.015 after normalisation).
    assert (ours - expected).abs().mean() < 0.01


def test_missing_clip_model_gives_one_sentence_naming_it_and_the_fix():
    with pytest.raises(MetricUnavailableError) as caught:
        load_clip("nobody-here/no-such-clip")
    message = str(caught.value)
    assert "nobody-here/no-such-clip" in message and "hf download" in message
    assert message.count(". ") == 0, "one sentence"


def test_a_folder_that_is_not_a_clip_model_is_named(tmp_path):
    with pytest.raises(MetricUnavailableError, match="is not a CLIP model folder"):
        load_clip(tmp_path)


# ------------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    mean1, mean2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    expected = 5.0 + float(((var1.sqrt() - var2.sqrt()) ** 2).sum())  # 5 + 1 + 1 + 4
    assert math.isclose(
        frechet_distance(mean1, torch.diag(var1), mean2, torch.diag(var2)), expected, rel_tol=1e-12
    )


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    generator = torch.Generator().manual_seed(8)
    a, b, mean1, mean2 = (
        torch.randn(shape, generator=generator, dtype=torch.float64)
        for shape in ((6, 6), (6, 6), (6,), (6,))
    )
    cov1, cov2 = a @ a.T, b @ b.T
    root = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = float(((mean1 - mean2) ** 2).sum()) + np.trace(
        cov1.numpy() + cov2.numpy() - 2 * root
    )
    assert math.isclose(frechet_distance(mean1, cov1, mean2, cov2), expected, rel_tol=1e-9)


def test_frechet_distance_of_a_rank_deficient_gaussian_with_itself_is_zero():
    vectors = torch.randn(4, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    cov = vectors.T @ vectors  # rank 4 of 10: eigenvalues at round-off level, some negative
    assert frechet_distance(torch.zeros(10), cov, torch.zeros(10), cov) == pytest.approx(
        0, abs=1e-9
    )


def test_gaussian_fit_recovers_known_gaussians_and_their_distance():
    generator = torch.Generator().manual_seed(10)
    first = torch.randn(20000, 2, generator=generator) * torch.tensor([1.0, 2.0])
    second = torch.randn(20000, 2, generator=generator) + torch.tensor([3.0, 0.0])
    distance = frechet_distance(*gaussian_fit(first), *gaussian_fit(second))
    assert distance == pytest.approx(9.0 + 0.0 + 1.0, rel=0.03)  # ‖Δμ‖² + (1−1)² + (2−1)²


def channel_means(images: torch.Tensor) -> torch.Tensor:
    """A 3-d feature network: the mean colour."""
    return images.mean(dim=(-2, -1))


def test_frechet_distance_of_a_set_with_itself_is_zero_and_quiet_for_large_sets(recwarn):
    images = random_images(60, 8, 8, seed=11)
    assert frechet_feature_distance(images, images, channel_means, batch_size=7) == pytest.approx(
        0, abs=1e-12
    )
    assert not [w for w in recwarn if issubclass(w.category, SmallSampleWarning)]
    shifted = (images + 0.1).clamp(0, 1)
    assert frechet_feature_distance(images, shifted, channel_means) > 0.01


def test_small_sets_warn_that_the_number_is_not_meaningful():
    images = random_images(10, 8, 8, seed=12)
    with pytest.warns(SmallSampleWarning, match="10 images is too small.*meaningful"):
        frechet_feature_distance(images, images, channel_means)


def test_frechet_refuses_sets_of_one_and_mismatched_shapes():
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        gaussian_fit(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"cov2 must have shape \(2, 2\), got \(3, 3\)"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))


def test_fd_clip_of_a_set_with_itself_is_zero(clip_encoder):
    images = random_images(4, 16, 16, seed=13)
    with pytest.warns(SmallSampleWarning):
        assert frechet_feature_distance(images, images, clip_encoder) == pytest.approx(0, abs=1e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("pytorch_fid") is not None, reason="pytorch-fid is installed"
)
def test_inception_without_pytorch_fid_says_what_to_install():
    with pytest.raises(MetricUnavailableError, match="pip install pytorch-fid"):
        load_inception()


# ------------------------------------------------------------------------ latent shift


def test_latent_shift_reports_the_encoder_move_for_the_pixel_move(tiny_model, images):
    delta = 8 / 255 * torch.sign(random_images(2, 16, 20, seed=14) - 0.5)
    protected = (images + delta).clamp(0, 1)
    flags = [(p, p.requires_grad) for p in tiny_model.vae.parameters()]
    shift = latent_shift(tiny_model, images, protected)
    with torch.no_grad():
        change = (tiny_model.encode(protected) - tiny_model.encode(images)).double().flatten(1)
    pixel = (protected.double() - images.double()).abs().flatten(1).amax(dim=1)
    assert torch.allclose(shift.pixel_linf, pixel)
    assert torch.allclose(shift.latent_linf, change.abs().amax(dim=1), rtol=1e-5)
    assert torch.allclose(shift.latent_l2, change.norm(dim=1), rtol=1e-5)
    assert torch.allclose(shift.ratio, shift.latent_linf / shift.pixel_linf)
    assert (shift.latent_linf > 0).all() and not shift.latent_linf.requires_grad
    assert all(p.requires_grad == flag for p, flag in flags), "model state restored"


def test_latent_shift_of_identical_images_is_zero_with_undefined_ratio(tiny_model):
    clean = random_images(1, 15, 21, seed=15)  # not a multiple of the VAE factor: padded
    shift = latent_shift(tiny_model, clean, clean)
    assert float(shift.latent_linf) == 0 and float(shift.pixel_linf) == 0
    assert torch.isnan(shift.ratio).all()
    assert set(shift.as_columns()) == {"latent_linf", "pixel_linf", "ratio", "latent_l2"}


# ------------------------------------------------------------------------ what is available


def test_load_metrics_skips_what_is_unavailable_with_reasons_and_runs_the_rest(images):
    loaded = load_metrics(["psnr", "ssim", "latent_shift", "clip"], clip_model="nobody/no-clip")
    assert list(loaded.pair) == ["psnr", "ssim"]
    reasons = {skipped.metric: skipped.reason for skipped in loaded.skipped}
    assert set(reasons) == {"latent_shift", "clip"}
    assert "model=" in reasons["latent_shift"] and "nobody/no-clip" in reasons["clip"]
    columns = loaded.measure_pairs(images, images.flip(-1))
    assert set(columns) == {"psnr", "ssim"}
    assert all(
        column.shape == (2,) and column.dtype == torch.float64 for column in columns.values()
    )


def test_load_metrics_runs_pair_and_set_metrics_with_one_clip(tiny_model, clip_dir, images):
    loaded = load_metrics(
        ["psnr", "clip", "latent_shift", "fd_clip"], model=tiny_model, clip_model=str(clip_dir)
    )
    assert not loaded.skipped
    assert loaded.pair["clip"].keywords["encoder"] is loaded.sets["fd_clip"].keywords["network"]
    protected = (images + 4 / 255).clamp(0, 1)
    columns = loaded.measure_pairs(protected, images)
    assert set(columns) == {
        "psnr",
        "clip",
        "latent_shift_latent_linf",
        "latent_shift_pixel_linf",
        "latent_shift_ratio",
        "latent_shift_latent_l2",
    }
    with pytest.warns(SmallSampleWarning):
        sets = loaded.measure_sets(images, images)
    assert sets["fd_clip"] == pytest.approx(0, abs=1e-6)


def test_load_metrics_refuses_unknown_names_before_loading_anything():
    with pytest.raises(ValueError, match="unknown metric 'fidd'; known: psnr, ssim, lpips"):
        load_metrics(["psnr", "fidd"])
