"""Heatmap <-> coordinate utilities and the one coordinate convention used everywhere.

Convention (pixel centres at integers): in any image or heatmap, pixel (i, j) covers the square
[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5] and its centre is the point (x=j, y=i). Points are
(x, y) pairs. A heatmap with stride s relative to its input maps as

    x_input = (x_heatmap + 0.5) * s - 0.5          (and the inverse)

so the centre of heatmap pixel 0 (stride 4) is input x = 1.5, the centre of input pixels 0..3.
The official code's `x * 4` skips the half-pixel offset and is off by 1.5 px at 128; we don't.
"""

from __future__ import annotations

import torch

__all__ = [
    "PAPER_BETA",
    "PAPER_BOTTLENECK_SIGMA",
    "expected_location",
    "hard_argmax",
    "heatmap_to_input",
    "input_to_heatmap",
    "locate",
    "refined_argmax",
    "render_gaussians",
    "soft_argmax",
    "spatial_softmax",
]

PAPER_BETA = 10.0  # softargmax inverse temperature (paper: beta = 10, i.e. temperature 0.1)
PAPER_BOTTLENECK_SIGMA = 0.5**0.5  # paper: H = exp(-||p - u||^2 / sigma^2), sigma = sqrt(0.5)


def _grid(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(size, device=device, dtype=dtype)


def soft_argmax(heatmaps: torch.Tensor, beta: float = PAPER_BETA) -> torch.Tensor:
    """Differentiable expected location of softmax(beta * heatmap) over the whole map.

    Args:
        heatmaps: (..., H, W) raw scores.
    Returns:
        (..., 2) sub-pixel (x, y) in heatmap pixels (pixel centres at integers).
    """
    return expected_location(spatial_softmax(heatmaps, beta))


def spatial_softmax(heatmaps: torch.Tensor, beta: float = PAPER_BETA) -> torch.Tensor:
    """softmax(beta * heatmap) over each (H, W) map, in float32: (..., H, W) -> (..., H, W)."""
    *lead, h, w = heatmaps.shape
    return torch.softmax(beta * heatmaps.reshape(*lead, h * w).float(), dim=-1).reshape(*lead, h, w)


def locate(heatmaps: torch.Tensor, input_size: int, beta: float = PAPER_BETA) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (..., H, W) heatmaps of an input_size x input_size image -> the soft-argmax points in input
    pixels, (..., 2), and their confidences, the peak of softmax(beta * heatmap), (...) in [1/(H*W), 1]."""
    probs = spatial_softmax(heatmaps, beta)
    points = heatmap_to_input(expected_location(probs), input_size / heatmaps.shape[-1])
    return points, probs.flatten(-2).amax(dim=-1)


def expected_location(probs: torch.Tensor) -> torch.Tensor:
    """(..., H, W) probability maps -> (..., 2) expected (x, y) in heatmap pixels."""
    h, w = probs.shape[-2:]
    xs = _grid(w, probs.device, probs.dtype)
    ys = _grid(h, probs.device, probs.dtype)
    x = (probs.sum(dim=-2) * xs).sum(dim=-1)
    y = (probs.sum(dim=-1) * ys).sum(dim=-1)
    return torch.stack((x, y), dim=-1)


def hard_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Integer (x, y) of each map's maximum, as floats: (..., H, W) -> (..., 2)."""
    *lead, h, w = heatmaps.shape
    index = heatmaps.reshape(*lead, h * w).argmax(dim=-1)
    return torch.stack(((index % w).float(), torch.div(index, w, rounding_mode="floor").float()), dim=-1)


def refined_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax moved a quarter pixel towards the higher neighbour (the usual decoding of
    MSE-trained heatmaps); returns ((..., 2) points, (...) peak values as confidences)."""
    *lead, h, w = heatmaps.shape
    flat = heatmaps.reshape(-1, h, w).float()
    peak = hard_argmax(flat)
    x, y = peak[:, 0].long(), peak[:, 1].long()
    rows = torch.arange(flat.shape[0], device=flat.device)
    value = flat[rows, y, x]
    dx = flat[rows, y, (x + 1).clamp(max=w - 1)] - flat[rows, y, (x - 1).clamp(min=0)]
    dy = flat[rows, (y + 1).clamp(max=h - 1), x] - flat[rows, (y - 1).clamp(min=0), x]
    refined = peak + 0.25 * torch.stack((torch.sign(dx), torch.sign(dy)), -1)
    return refined.reshape(*lead, 2), value.reshape(*lead)


def render_gaussians(points: torch.Tensor, size: int, sigma: float = PAPER_BOTTLENECK_SIGMA) -> torch.Tensor:
    """Maps exp(-||u - p||^2 / sigma^2) (the paper's form, peak 1) at each point.

    Args:
        points: (..., K, 2) (x, y) in heatmap pixels.
        size: side of the square output maps.
    Returns:
        (..., K, size, size).
    """
    grid = _grid(size, points.device, points.dtype)
    dx2 = (grid - points[..., 0:1]) ** 2  # (..., K, W)
    dy2 = (grid - points[..., 1:2]) ** 2  # (..., K, H)
    return torch.exp(-(dy2.unsqueeze(-1) + dx2.unsqueeze(-2)) / sigma**2)


def heatmap_to_input(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap pixels -> input pixels (half-pixel convention above)."""
    return (points + 0.5) * stride - 0.5


def input_to_heatmap(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Input pixels -> heatmap pixels (inverse of `heatmap_to_input`)."""
    return (points + 0.5) / stride - 0.5
