"""The amortised protector: a small fully-convolutional network that outputs the perturbation.

PGD spends 100 encoder passes per image; an amortised protector is trained once, against one
surrogate model, to output a perturbation in one forward pass (the idea of FastProtect, CVPR
2025, and of earlier perturbation generators). This module holds the network and its loading:

- ``PerturbationNetwork``: a small U-Net (strided convolutions down, nearest-neighbour upsampling
  and skip connections up, residual blocks, no normalisation layer, so it runs at any size that
  is a multiple of its ``stride``). Its last layer gives h; the perturbation is ε·tanh(h), so the
  L∞ budget holds by construction, whatever the weights.
- It is a diffusers ``ModelMixin, ConfigMixin``: ``save_pretrained`` / ``from_pretrained`` (a
  folder or a hub id) work as for any diffusers model, and the config records what the network
  was trained against (surrogate name and configuration digest) and for which ε.
- ``load_protector``: the shipped name ``protector-mini`` or a folder / hub id, with one sentence
  when it is missing.

Written by hand: no library ships a perturbation generator with a bounded output; diffusers'
``UNet2DModel`` needs a timestep input and group normalisation, and is far larger than needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .devices import ModelUnavailableError
from .hub import hub_reachable

logger = logging.getLogger(__name__)

#: Protectors shipped with the package, by name (see each folder's README.md).
SHIPPED_PROTECTORS = {"protector-mini": Path(__file__).parent.parent / "weights" / "protector-mini"}
#: The protector ``METHODS["amortised"]`` uses unless told otherwise.
DEFAULT_PROTECTOR = "protector-mini"


class _Residual(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))): two 3×3 convolutions at one width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(F.silu(self.first(F.silu(x))))


class PerturbationNetwork(ModelMixin, ConfigMixin):
    """A small U-Net from images to a bounded perturbation: δ = ε·tanh(h(x)).

    Level i works at 1/2^i of the input size with ``block_channels[i]`` channels: one residual
    block on the way down, a stride-2 convolution to the next level, and on the way up nearest
    upsampling, a 3×3 convolution, concatenation with the skip and a 1×1 merge, then one residual
    block. ``stride`` = 2^(levels − 1); other sizes are padded by reflection and cropped back.

    Attributes (the config):
        block_channels: channels per level, full resolution first.
        eps_255: the L∞ budget (0–255 units) the network was trained for.
        surrogate: name of the model it was trained against (``LatentDiffusion.name``).
        surrogate_digest: ``LatentDiffusion.config_digest()`` of that model.
        objective: what training maximised (e.g. "sds-"), for the record.
        centred: subtract from h its mean over each image and channel before the tanh, so no
            constant colour shift can take over: uncentred, both pilot objectives collapsed
            within 100 steps to one image-independent ±ε offset per channel, saturated (tanh
            at ±1, so no gradient left) and weak (training/protector/README.md).
    """

    @register_to_config
    def __init__(
        self,
        block_channels: tuple[int, ...] = (16, 32, 64, 128),
        eps_255: float = 16.0,
        surrogate: str = "untrained",
        surrogate_digest: str = "",
        objective: str = "",
        centred: bool = True,
    ) -> None:
        super().__init__()
        channels = list(block_channels)
        self.stem = nn.Conv2d(3, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(_Residual(width) for width in channels)
        self.downsamplers = nn.ModuleList(
            nn.Conv2d(wide, wider, 3, stride=2, padding=1)
            for wide, wider in zip(channels, channels[1:], strict=False)
        )
        self.upsamplers = nn.ModuleList(
            nn.Conv2d(wider, wide, 3, padding=1)
            for wide, wider in zip(channels, channels[1:], strict=False)
        )
        self.merges = nn.ModuleList(nn.Conv2d(2 * width, width, 1) for width in channels[:-1])
        self.up_blocks = nn.ModuleList(_Residual(width) for width in channels[:-1])
        self.head = nn.Conv2d(channels[0], 3, 3, padding=1)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (others are padded): 2^(levels − 1)."""
        return 2 ** (len(self.config.block_channels) - 1)

    @property
    def trained_eps(self) -> float:
        """The L∞ budget on the [0, 1] scale the network was trained for."""
        return self.config.eps_255 / 255

    def forward(self, images: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """The perturbation δ of (B, 3, H, W) images in [0, 1]: float32, ‖δ‖∞ ≤ ε.

        Args:
            images: (B, 3, H, W) in [0, 1], any H and W (reflection-padded to ``stride``; sides
                below the padding need at least 2 pixels).
            eps: L∞ radius on the [0, 1] scale; None: the trained one. Another ε scales the
                trained perturbation pattern (δ = ε·tanh(h) with the same h).

        Returns:
            (B, 3, H, W) float32 in [−ε, ε]. The tanh and the scaling run in float32 whatever
            the network's dtype, so the bound holds exactly as computed.
        """
        eps = self.trained_eps if eps is None else eps
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        x = images.to(self.dtype) * 2 - 1
        if pad_h or pad_w:
            x = F.pad(
                x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > 1 else "replicate"
            )
        x = self.stem(x)
        skips = []
        for level, block in enumerate(self.down_blocks):
            x = block(x)
            if level < len(self.downsamplers):
                skips.append(x)
                x = self.downsamplers[level](F.silu(x))
        for level in reversed(range(len(skips))):
            x = self.upsamplers[level](F.interpolate(F.silu(x), scale_factor=2.0, mode="nearest"))
            x = self.merges[level](torch.cat([x, skips[level]], dim=1))
            x = self.up_blocks[level](x)
        h = self.head(F.silu(x))[..., :height, :width].float()
        if self.config.centred:
            h = h - h.mean(dim=(-2, -1), keepdim=True)
        return eps * torch.tanh(h)


def load_protector(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> PerturbationNetwork:
    """A trained protector from a shipped name (``protector-mini``), a folder or a hub id.

    Loaded in float32 (the weights are small; the caller may convert), in eval mode, with no
    gradients.

    Raises:
        ModelUnavailableError: nothing loadable there, in one sentence.
    """
    name = str(name_or_path)
    source = SHIPPED_PROTECTORS.get(name, name)
    if name in SHIPPED_PROTECTORS and not (Path(source) / "config.json").is_file():
        raise ModelUnavailableError(
            f"the shipped protector '{name}' is not installed at {source}; reinstall mimicshield"
        )
    local = Path(source).exists() or not hub_reachable()
    try:
        network = PerturbationNetwork.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, TypeError) as error:
        logger.debug("loading the protector %s failed", source, exc_info=error)
        raise ModelUnavailableError(_missing_protector_sentence(name)) from None
    return network.to(device).eval().requires_grad_(False)


def _missing_protector_sentence(name: str) -> str:
    where = (
        f"'{name}' is not a protector folder (it needs config.json and the weights that "
        "PerturbationNetwork.save_pretrained writes)"
        if Path(name).exists()
        else f"no protector '{name}' on disk or in the local Hugging Face cache"
    )
    return (
        f"{where}; give a folder written by `python -m training.protector`, a hub id, or "
        f"'{DEFAULT_PROTECTOR}' (the bundled one, trained against the miniature)."
    )
