"""Metrics: pure functions on (B, 3, H, W) images in [0, 1] (DESIGN §4).

Networks that need pretrained weights are passed in; the ``load_*`` functions build them and
raise ``MetricUnavailableError`` with a one-sentence fix when they cannot. ``load_metrics``
loads whatever is available and lists what was skipped and why.
"""

from __future__ import annotations

from .clip import DEFAULT_CLIP_MODEL, ClipImageEncoder, clip_similarity, load_clip
from .errors import MetricUnavailableError
from .fid import (
    MIN_MEANINGFUL_SET,
    SmallSampleWarning,
    features_of,
    frechet_distance,
    frechet_feature_distance,
    gaussian_fit,
    load_inception,
)
from .image_quality import SSIM_MIN_SIZE, psnr, ssim
from .latent_shift import LatentShift, latent_shift
from .lpips import LpipsNetwork, load_lpips, lpips_distance
from .suite import (
    PAIR_METRICS,
    SET_METRICS,
    LoadedMetrics,
    SkippedMetric,
    load_metrics,
)

__all__ = [
    "MIN_MEANINGFUL_SET",
    "SSIM_MIN_SIZE",
    "DEFAULT_CLIP_MODEL",
    "PAIR_METRICS",
    "SET_METRICS",
    "ClipImageEncoder",
    "LatentShift",
    "LoadedMetrics",
    "LpipsNetwork",
    "MetricUnavailableError",
    "SkippedMetric",
    "SmallSampleWarning",
    "clip_similarity",
    "features_of",
    "frechet_distance",
    "frechet_feature_distance",
    "gaussian_fit",
    "latent_shift",
    "load_clip",
    "load_inception",
    "load_lpips",
    "load_metrics",
    "lpips_distance",
    "psnr",
    "ssim",
]
