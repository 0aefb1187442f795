"""LPIPS: a learned perceptual distance between images.

Zhang et al., "The unreasonable effectiveness of deep features as a perceptual metric", CVPR 2018:

    d(x, y) = Σ_l  mean_{h,w}  Σ_c  w_{l,c} · (x̂_{l,chw} − ŷ_{l,chw})²

where x̂_l is layer l's feature map of x scaled to unit length along the channels at every pixel
and w_l ≥ 0 are learned per-channel weights. The formula lives in ``lpips_distance`` and runs on
any ``LpipsNetwork``; ``load_lpips`` adapts the reference ``lpips`` package (its shipped linear
weights over a torchvision AlexNet/VGG/SqueezeNet), which is optional because it pulls in
torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..tensors import check_pair
from .errors import MetricUnavailableError

#: Added to the channel norm before dividing, as in the reference (guards all-zero features).
_NORM_EPS = 1e-10
#: Backbones the ``lpips`` package ships linear weights for.
LPIPS_NETS = ("alex", "vgg", "squeeze")


class LpipsNetwork(Protocol):
    """What ``lpips_distance`` needs: feature maps and per-channel weights, layer by layer."""

    def features(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] → one (B, C_l, H_l, W_l) map per layer.

        Any input scaling the backbone wants happens inside.
        """
        ...

    @property
    def channel_weights(self) -> Sequence[torch.Tensor]:
        """One (C_l,) non-negative weight vector per layer, in the order of ``features``."""
        ...


def lpips_distance(
    images: torch.Tensor, references: torch.Tensor, network: LpipsNetwork
) -> torch.Tensor:
    """LPIPS distance of each image to its reference (0 for identical images).

    Differentiable; wrap in ``torch.no_grad()`` when only measuring.

    Args:
        images: (B, 3, H, W) in [0, 1].
        references: (B, 3, H, W) in [0, 1], the same shape as ``images``.
        network: the backbone and its learned channel weights (``load_lpips`` or a stand-in).

    Returns:
        (B,) float32 on the network's device, ≥ 0.
    """
    check_pair(images, references)
    batch = images.shape[0]
    # One backbone pass over both sets: half the kernel launches of two passes.
    layers = network.features(torch.cat([images, references]))
    weights = network.channel_weights
    if len(layers) != len(weights):
        raise ValueError(
            f"the LPIPS network gave {len(layers)} feature maps but {len(weights)} weight vectors"
        )
    distance = torch.zeros(batch, device=layers[0].device, dtype=torch.float32)
    for index, (features, weight) in enumerate(zip(layers, weights, strict=True)):
        if weight.shape != (features.shape[1],):
            raise ValueError(
                f"layer {index}: expected channel weights of shape ({features.shape[1]},) to match "
                f"its feature map, got {tuple(weight.shape)}"
            )
        unit = features.float() / (features.float().norm(dim=1, keepdim=True) + _NORM_EPS)
        squared = (unit[:batch] - unit[batch:]).pow(2)
        weighted = (squared * weight.float().view(1, -1, 1, 1)).sum(dim=1)
        distance = distance + weighted.mean(dim=(-2, -1))
    return distance


@dataclass(frozen=True)
class LpipsPackageNetwork:
    """An ``LpipsNetwork`` over a loaded ``lpips.LPIPS`` module (version 0.1, the standard one).

    Reproduces the package's own forward pass: inputs mapped to [-1, 1], its scaling layer, the
    backbone's ReLU outputs, and the 1×1 convolution weights of its linear layers.
    """

    module: torch.nn.Module

    def features(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] → one (B, C_l, H_l, W_l) ReLU output per backbone layer."""
        device = next(self.module.parameters()).device
        scaled = self.module.scaling_layer(images.to(device) * 2 - 1)
        return list(self.module.net.forward(scaled))

    @property
    def channel_weights(self) -> Sequence[torch.Tensor]:
        """One (C_l,) vector per layer: the kernels of the package's 1×1 linear convolutions."""
        # Each linear layer is Sequential([Dropout,] Conv2d(C, 1, 1, bias=False)): the conv's
        # (1, C, 1, 1) kernel is the channel weight vector.
        return [linear.model[-1].weight.flatten() for linear in self.module.lins]


def load_lpips(net: str = "alex", *, device: str | torch.device = "cpu") -> LpipsPackageNetwork:
    """The standard LPIPS network from the ``lpips`` package, frozen, in eval mode.

    The package ships its linear weights; the backbone's ImageNet weights come through
    torchvision (downloaded once into the torch hub cache).

    Args:
        net: backbone, one of ``LPIPS_NETS`` ("alex" is the paper's recommended metric).
        device: where to put it.

    Raises:
        MetricUnavailableError: ``lpips`` (or torchvision) is not installed, or the backbone
            weights are not cached and cannot be downloaded.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got '{net}'")
    try:
        import lpips
    except ImportError:
        raise MetricUnavailableError(
            "LPIPS needs the `lpips` package and torchvision, which are not installed: run "
            "`pip install lpips` (it brings torchvision, so install it where torchvision matches "
            "your torch build)."
        ) from None
    try:
        module = lpips.LPIPS(net=net, verbose=False)
    except OSError:  # urllib's URLError is an OSError: no cached backbone and no network
        raise MetricUnavailableError(
            f"LPIPS could not load the pretrained '{net}' backbone weights, which torchvision "
            f"downloads once into {torch.hub.get_dir()}: run it once with network access or copy "
            "the weights there."
        ) from None
    module.eval().requires_grad_(False).to(device)
    return LpipsPackageNetwork(module)
