"""The conditional image generator of the tight bottleneck (after Jakab et al. 2018).

It sees the deformed image y' and Gaussian maps rendered from the landmarks of y, and must
reconstruct y; the only way to know where the parts of y are is through the landmarks.

Official layout (base=32): 7x7 conv 3->32; two 4x4 stride-2 convs 32->64->128 (S/4); concat the
K maps; 6 residual blocks; two transposed convs back to S; 7x7 conv to 3; 0.5 * (tanh + 1);
BatchNorm throughout; ~2.4M parameters at K = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ConditionalGenerator", "GeneratorConfig"]


@dataclass(frozen=True)
class GeneratorConfig:
    num_landmarks: int = 10
    base_channels: int = 32
    num_res_blocks: int = 6
    # "transposed" (the official layout) or "resize": nearest-neighbour x2 then a 3x3 conv, which cannot
    # leave the checkerboard pattern transposed convs with stride 2 print (Odena et al. 2016)
    upsample: str = "transposed"
    # concatenate the encoder's features of y' at S and S/2 into the decoder (a U-Net from y' only;
    # never from y, whose appearance would leak past the landmark bottleneck)
    skips: bool = False

    def __post_init__(self) -> None:
        if self.num_landmarks < 1 or self.base_channels < 4 or self.num_res_blocks < 0:
            raise ValueError(f"invalid generator config {self}")
        if self.upsample not in ("transposed", "resize"):
            raise ValueError(f"upsample must be 'transposed' or 'resize', got {self.upsample!r}")

    @property
    def official_decoder(self) -> bool:
        """The official layout (one Sequential; its checkpoints' keys) rather than the U-Net decoder."""
        return self.upsample == "transposed" and not self.skips


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    pad = (kernel - stride + 1) // 2 if stride > 1 else kernel // 2
    return [nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ConditionalGenerator(nn.Module):
    """(y' (B,3,S,S) in [0,1], maps (B,K,S/4,S/4)) -> reconstruction of y (B,3,S,S) in [0,1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.base_channels
        self.encoder = nn.Sequential(
            *_conv_bn_relu(3, c, 7),
            *_conv_bn_relu(c, 2 * c, 4, stride=2),
            *_conv_bn_relu(2 * c, 4 * c, 4, stride=2),
        )
        self.fuse = nn.Sequential(*_conv_bn_relu(4 * c + config.num_landmarks, 4 * c, 3))
        self.blocks = nn.Sequential(*[_ResBlock(4 * c) for _ in range(config.num_res_blocks)])
        if config.official_decoder:
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(2 * c),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, 3, 7, padding=3),
            )
        else:
            skip = 1 if config.skips else 0
            self.up = nn.ModuleList([_Up(4 * c, 2 * c, config.upsample), _Up(2 * c, c, config.upsample)])
            self.merge = nn.ModuleList([nn.Sequential(*_conv_bn_relu(2 * c * (1 + skip), 2 * c, 3)),
                                        nn.Sequential(*_conv_bn_relu(c * (1 + skip), c, 3))])
            self.to_rgb = nn.Conv2d(c, 3, 7, padding=3)

    def forward(self, deformed: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        if self.config.official_decoder:
            features = self.encoder(deformed * 2 - 1)
            x = self.blocks(self.fuse(torch.cat((features, maps.to(features.dtype)), dim=1)))
            return 0.5 * (torch.tanh(self.decoder(x)) + 1)
        full = self.encoder[:3](deformed * 2 - 1)  # S
        half = self.encoder[3:6](full)  # S/2
        features = self.encoder[6:](half)  # S/4
        x = self.blocks(self.fuse(torch.cat((features, maps.to(features.dtype)), dim=1)))
        for up, merge, skip in zip(self.up, self.merge, (half, full)):
            x = up(x)
            x = merge(torch.cat((x, skip), dim=1) if self.config.skips else x)
        return 0.5 * (torch.tanh(self.to_rgb(x)) + 1)


class _Up(nn.Module):
    """x2 upsampling: a stride-2 transposed conv, or nearest-neighbour resize then a 3x3 conv."""

    def __init__(self, cin: int, cout: int, mode: str) -> None:
        super().__init__()
        if mode == "transposed":
            conv: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)]
        else:
            conv = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
        self.body = nn.Sequential(*conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
