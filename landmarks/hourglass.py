"""The core landmark detector: FAN's single-stack hourglass (Bulat & Tzimiropoulos).

This module knows nothing about adapters. It builds a plain network from a small frozen
config; `landmarks.projection` wraps its convolutions for adaptation and folds them back.

Shapes for the `paper` preset: 128x128 RGB in, K raw 32x32 heatmaps out, ~6.23M parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from landmarks.text import clip

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


# (field, lowest, highest): far beyond any sensible network, tight enough that no config read from
# a file can make building or running it take the machine's memory.
_INT_LIMITS = (
    ("num_landmarks", 1, 1024),
    ("stem_channels", 4, 4096),
    ("mid_channels", 4, 4096),
    ("features", 4, 4096),
    ("depth", 1, 6),
    ("input_size", 8, 1024),
)


@dataclass(frozen=True)
class HourglassConfig:
    """Architecture of the core. Stored as JSON in every core and adapter file.

    Attributes:
        num_landmarks: K, the number of heatmaps the head produces.
        stem_channels: output channels of the 7x7 stride-2 stem conv (FAN: 64).
        mid_channels: channels of the first two ConvBlocks (FAN: 128).
        features: channels inside the hourglass (FAN: 256).
        depth: number of 2x downsamplings inside the hourglass (FAN: 4).
        input_size: side of the square input image; heatmaps are input_size / 4.
        mean, std: per-channel normalisation applied inside `forward` to images in [0, 1],
            so preprocessing travels with the weights and cannot drift between train and serve.
    """

    num_landmarks: int = 14
    stem_channels: int = 64
    mid_channels: int = 128
    features: int = 256
    depth: int = 4
    input_size: int = 128
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        # Configs arrive from files users hand us: check types and ranges here, the one place every
        # core, adapter and network passes, so a bad value is a clear ValueError, never a torch error.
        for name, low, high in _INT_LIMITS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {clip(value)} ({type(value).__name__})")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {value}")
        for name in ("stem_channels", "mid_channels", "features"):
            value = getattr(self, name)
            if value % 4:
                raise ValueError(f"{name} must be a positive multiple of 4 (ConvBlock splits it 2:1:1), got {value}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, (list, tuple)) or len(values) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in values)):
                raise ValueError(f"{name} needs 3 finite numbers, got {clip(values)}")
        # Stem /2, pool /2, then `depth` halvings inside the hourglass must stay integral.
        if self.input_size % (4 * 2**self.depth):
            step = 4 * 2**self.depth  # the stem and pool halve twice, then the hourglass depth times
            raise ValueError(f"input_size {self.input_size} must be a multiple of 4 * 2**depth = {step} for this "
                             f"network (e.g. {step} or {2 * step})")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 4

    def replace(self, **changes) -> HourglassConfig:
        return HourglassConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HourglassConfig:
        """Raises ValueError (with what is wrong) for anything but a valid config object."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("config JSON is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hourglass config fields {sorted(unknown)}")
        return cls(**data)


def paper_config(num_landmarks: int = 14) -> HourglassConfig:
    """FAN as in the paper's code: one stack, depth 4, 256 features, 128 px."""
    return HourglassConfig(num_landmarks=num_landmarks)


def cpu_config(num_landmarks: int = 14) -> HourglassConfig:
    """Half-width FAN for 2-core CPU training: same topology and 128 px input, 1.57M parameters.

    Measured on a 2-core AMD EPYC (AVX2, no AVX-512): one fp32 training step of batch 16 runs
    at ~31 img/s (~34 with channels_last) against ~6.5 img/s for `paper_config`
    (`python scripts/training_speed.py core` measures both on the machine at hand).
    """
    return HourglassConfig(num_landmarks=num_landmarks, stem_channels=32, mid_channels=64, features=128)


def w192_config(num_landmarks: int = 14) -> HourglassConfig:
    """Three-quarter-width FAN (192 features), between `cpu_config` and `paper_config`."""
    return HourglassConfig(num_landmarks=num_landmarks, stem_channels=48, mid_channels=96, features=192)


def tiny_config(num_landmarks: int = 5) -> HourglassConfig:
    """A few-thousand-parameter hourglass for tests: same topology, 32 px input."""
    return HourglassConfig(
        num_landmarks=num_landmarks, stem_channels=8, mid_channels=8, features=8, depth=2, input_size=32
    )


ARCHITECTURES = {"paper": paper_config, "w192": w192_config, "cpu": cpu_config, "tiny": tiny_config}


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

