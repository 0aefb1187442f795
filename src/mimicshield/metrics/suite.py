"""Run whatever metrics are available: load each once, skip (and say why) those that cannot run.

Metrics whose network is missing (no ``lpips`` package, CLIP weights not cached, no model passed
for the latent shift) raise ``MetricUnavailableError`` while loading; ``load_metrics`` records
them as skipped with that message and loads the rest. Any other error is a fault and propagates.

Two registries, by what a metric compares:
- ``PAIR_METRICS``: image i against reference i, one value per image.
- ``SET_METRICS``: one set of images against another, one value per pair of sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

import torch

from ..models import LatentDiffusion
from .clip import DEFAULT_CLIP_MODEL, ClipImageEncoder, clip_similarity, load_clip
from .errors import MetricUnavailableError
from .fid import FeatureNetwork, frechet_feature_distance, load_inception
from .image_quality import psnr, ssim
from .latent_shift import latent_shift
from .lpips import LpipsNetwork, load_lpips, lpips_distance

#: images, references (B, 3, H, W) → (B,) values, or several named (B,) columns.
PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | Mapping[str, torch.Tensor]]
#: images (N, 3, H, W), references (M, 3, H', W') → one value.
SetMetric = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class SkippedMetric:
    """A metric that was asked for but cannot run here, and the one-sentence reason."""

    metric: str
    reason: str


@dataclass
class _Networks:
    """Loads each network on first use and keeps it: one CLIP serves ``clip`` and ``fd_clip``."""

    device: torch.device | str
    model: LatentDiffusion | None
    lpips_net: str
    clip_model: str
    _loaded: dict[str, object] = field(default_factory=dict)

    def _once(self, key: str, load: Callable[[], object]) -> object:
        # A failure is remembered too: an unreachable hub is asked once, not once per metric.
        if key not in self._loaded:
            try:
                self._loaded[key] = load()
            except MetricUnavailableError as error:
                self._loaded[key] = error
        if isinstance(self._loaded[key], MetricUnavailableError):
            raise self._loaded[key]
        return self._loaded[key]

    def lpips(self) -> LpipsNetwork:
        return self._once("lpips", lambda: load_lpips(self.lpips_net, device=self.device))

    def clip(self) -> ClipImageEncoder:
        return self._once("clip", lambda: load_clip(self.clip_model, device=self.device))

    def inception(self) -> FeatureNetwork:
        return self._once("inception", lambda: load_inception(device=self.device))

    def diffusion_model(self) -> LatentDiffusion:
        if self.model is None:
            raise MetricUnavailableError(
                "the latent shift needs the latent diffusion model whose encoder it measures: "
                "pass model= to load_metrics."
            )
        return self.model


def _latent_shift_columns(networks: _Networks) -> PairMetric:
    model = networks.diffusion_model()
    # Pair convention (images, references) = (protected, clean).
    return lambda protected, clean: latent_shift(model, clean, protected).as_columns()


PAIR_METRICS: dict[str, Callable[[_Networks], PairMetric]] = {
    "psnr": lambda networks: psnr,
    "ssim": lambda networks: ssim,
    "lpips": lambda networks: partial(lpips_distance, network=networks.lpips()),
    "clip": lambda networks: partial(clip_similarity, encoder=networks.clip()),
    "latent_shift": _latent_shift_columns,
}

SET_METRICS: dict[str, Callable[[_Networks], SetMetric]] = {
    "fd_clip": lambda networks: partial(frechet_feature_distance, network=networks.clip()),
    "fid_inception": lambda networks: partial(
        frechet_feature_distance, network=networks.inception()
    ),
}


@dataclass(frozen=True)
class LoadedMetrics:
    """The metrics that could be loaded, and those that could not.

    Attributes:
        pair: name → pair metric, in the order asked for.
        sets: name → set metric, in the order asked for.
        skipped: what was asked for but is unavailable, with the reason.
        settings: every metric asked for → what its values depend on besides the images (the
            network and its weights), so that stored values are recomputed when it changes.
    """

    pair: Mapping[str, PairMetric]
    sets: Mapping[str, SetMetric]
    skipped: tuple[SkippedMetric, ...]
    settings: Mapping[str, str] = field(default_factory=dict)

    def only(self, names: Iterable[str]) -> LoadedMetrics:
        """The same metrics restricted to ``names`` (those not loaded are left out)."""
        wanted = set(names)
        return LoadedMetrics(
            pair={name: metric for name, metric in self.pair.items() if name in wanted},
            sets={name: metric for name, metric in self.sets.items() if name in wanted},
            skipped=tuple(skip for skip in self.skipped if skip.metric in wanted),
            settings={name: value for name, value in self.settings.items() if name in wanted},
        )

    def measure_pairs(
        self, images: torch.Tensor, references: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Every pair metric on (B, 3, H, W) images vs references → name → (B,) float64 on CPU.

        A metric with several columns (``latent_shift``) gives ``<name>_<column>`` entries.
        """
        columns: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, metric in self.pair.items():
                values = metric(images, references)
                named = values.items() if isinstance(values, Mapping) else [(None, values)]
                for column, tensor in named:
                    key = name if column is None else f"{name}_{column}"
                    columns[key] = tensor.detach().double().cpu()
        return columns

    def measure_sets(self, images: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
        """Every set metric on two image sets → name → value."""
        with torch.no_grad():
            return {name: metric(images, references) for name, metric in self.sets.items()}


def load_metrics(
    names: Iterable[str] | None = None,
    *,
    device: torch.device | str = "cpu",
    model: LatentDiffusion | None = None,
    lpips_net: str = "alex",
    clip_model: str = DEFAULT_CLIP_MODEL,
) -> LoadedMetrics:
    """Load the named metrics (all by default); unavailable ones are skipped with a reason.

    Args:
        names: from ``PAIR_METRICS`` and ``SET_METRICS``; None means all of them.
        device: where their networks go.
        model: the latent diffusion model, for ``latent_shift``.
        lpips_net: LPIPS backbone ("alex", "vgg", "squeeze").
        clip_model: hub id or folder of the CLIP model for ``clip`` and ``fd_clip``.

    Raises:
        ValueError: an unknown metric name (before anything is loaded).
    """
    wanted = list(PAIR_METRICS) + list(SET_METRICS) if names is None else list(names)
    unknown = [name for name in wanted if name not in PAIR_METRICS and name not in SET_METRICS]
    if unknown:
        known = ", ".join([*PAIR_METRICS, *SET_METRICS])
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; known: {known}")
    networks = _Networks(device=device, model=model, lpips_net=lpips_net, clip_model=clip_model)
    pair: dict[str, PairMetric] = {}
    sets: dict[str, SetMetric] = {}
    skipped: list[SkippedMetric] = []
    for name in dict.fromkeys(wanted):
        registry, loaded = (PAIR_METRICS, pair) if name in PAIR_METRICS else (SET_METRICS, sets)
        try:
            loaded[name] = registry[name](networks)
        except MetricUnavailableError as error:
            skipped.append(SkippedMetric(name, str(error)))
    return LoadedMetrics(
        pair=pair,
        sets=sets,
        skipped=tuple(skipped),
        settings={name: _setting(name, networks) for name in dict.fromkeys(wanted)},
    )


def _setting(name: str, networks: _Networks) -> str:
    """What a metric's values depend on besides the images (see ``LoadedMetrics.settings``)."""
    if name == "lpips":
        return f"lpips net={networks.lpips_net}"
    if name in ("clip", "fd_clip"):
        return f"clip model={networks.clip_model}"
    if name == "latent_shift":
        described = networks.model.describe() if networks.model is not None else None
        return f"latent_shift model={json.dumps(described, sort_keys=True)}"
    return name
