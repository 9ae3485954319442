"""The core landmark detector: FAN's single-stack hourglass (Bulat & Tzimiropoulos).

This module knows nothing about adapters. It builds a plain network from a small frozen
config (`landmarks.runtime.architecture`: torch-free, the serving side reads it there);
`landmarks.projection` wraps its convolutions for adaptation and folds them back.

Shapes for the `paper` preset: 128x128 RGB in, K raw 32x32 heatmaps out, ~6.23M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landmarks.runtime.architecture import (
    ARCHITECTURES,
    HourglassConfig,
    cpu_config,
    paper_config,
    tiny_config,
    w192_config,
)

__all__ = [
    "ARCHITECTURES",
    "ConvBlock",
    "Hourglass",
    "HourglassConfig",
    "LandmarkHourglass",
    "cpu_config",
    "paper_config",
    "tiny_config",
    "w192_config",
]


def _bn_relu_conv(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
    )


class ConvBlock(nn.Module):
    """Bulat & Tzimiropoulos' hierarchical, parallel, multi-scale block.

    Three pre-activated 3x3 convs with out/2, out/4, out/4 channels; their outputs are
    concatenated and added to the (possibly 1x1-projected) input.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.branch1 = _bn_relu_conv(in_ch, out_ch // 2, 3)
        self.branch2 = _bn_relu_conv(out_ch // 2, out_ch // 4, 3)
        self.branch3 = _bn_relu_conv(out_ch // 4, out_ch // 4, 3)
        self.skip = _bn_relu_conv(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.branch1(x)
        out2 = self.branch2(out1)
        out3 = self.branch3(out2)
        residual = x if self.skip is None else self.skip(x)
        return torch.cat((out1, out2, out3), dim=1) + residual


class Hourglass(nn.Module):
    """Recursive hourglass: average-pool down, nearest-neighbour up, skip at every level."""

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.upper = ConvBlock(features, features)
        self.down = ConvBlock(features, features)
        self.inner = Hourglass(depth - 1, features) if depth > 1 else ConvBlock(features, features)
        self.up = ConvBlock(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upper = self.upper(x)
        lower = self.up(self.inner(self.down(F.avg_pool2d(x, 2))))
        return upper + F.interpolate(lower, scale_factor=2.0, mode="nearest")


class LandmarkHourglass(nn.Module):
    """Images in [0, 1] of shape (B, 3, S, S) -> raw heatmaps (B, K, S/4, S/4)."""

    def __init__(self, config: HourglassConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.stem = nn.Sequential(
            nn.Conv2d(3, c.stem_channels, 7, stride=2, padding=3, bias=True),
            nn.BatchNorm2d(c.stem_channels),
            nn.ReLU(inplace=True),
        )
        self.block1 = ConvBlock(c.stem_channels, c.mid_channels)
        self.block2 = ConvBlock(c.mid_channels, c.mid_channels)
        self.block3 = ConvBlock(c.mid_channels, c.features)
        self.hourglass = Hourglass(c.depth, c.features)
        self.top = ConvBlock(c.features, c.features)
        self.top_conv = nn.Sequential(
            nn.Conv2d(c.features, c.features, 1, bias=True),
            nn.BatchNorm2d(c.features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(c.features, c.num_landmarks, 1, bias=True)
        self.register_buffer("pixel_mean", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Everything but the head: (B, features, S/4, S/4)."""
        x = (images - self.pixel_mean) / self.pixel_std
        x = self.block1(self.stem(x))
        x = self.block3(self.block2(F.avg_pool2d(x, 2)))
        return self.top_conv(self.top(self.hourglass(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

