"""Builders for tests: tiny seeded networks with non-trivial statistics (no ../shared needed)."""

from __future__ import annotations

import torch

from landmarks.hourglass import LandmarkHourglass, tiny_config
from landmarks.projection import ProjectedConv2d


def randomize_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics, so tests don't pass because BN is the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(1 + 0.3 * torch.rand(m.running_var.shape, generator=generator))


def make_tiny_core(num_landmarks: int = 5, seed: int = 0) -> LandmarkHourglass:
    torch.manual_seed(seed)
    core = LandmarkHourglass(tiny_config(num_landmarks))
    randomize_batchnorm(core, torch.Generator().manual_seed(seed + 1))
    return core.eval()


def randomize_adapter(model: torch.nn.Module, seed: int = 0) -> None:
    """Move an adapted network away from identity: projections, BN and head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ProjectedConv2d):
                m.proj.add_(0.1 * torch.randn(m.proj.shape, generator=g))
        randomize_batchnorm(model, g)
        model.head.weight.normal_(generator=g)
        model.head.bias.normal_(generator=g)
