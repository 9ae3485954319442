"""Crops and similarity warps, all in the pixel-centre convention of `landmarks.heatmaps`.

A box is (x0, y0, x1, y1) in *edge* coordinates of the original image (the whole image is
(0, 0, W, H)). Cropping the box to an S x S input maps an original point x (pixel centres at
integers) to  u = (x + 0.5 - x0) * S / (x1 - x0) - 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from landmarks.runtime.crops import crop_resized, square_box  # torch-free, shared with serving

__all__ = [
    "apply_affine",
    "crop_resized",
    "crop_to_tensor",
    "input_to_original",
    "invert_affine",
    "original_to_input",
    "similarity_matrix",
    "square_box",
    "warp_images",
]


def original_to_input(points: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    scale = torch.tensor([size / (x1 - x0), size / (y1 - y0)], dtype=points.dtype, device=points.device)
    origin = torch.tensor([x0, y0], dtype=points.dtype, device=points.device)
    return (points + 0.5 - origin) * scale - 0.5


def input_to_original(points: torch.Tensor, box: tuple[float, float, float, float] | torch.Tensor,
                      size: int) -> torch.Tensor:
    """(..., 2) points in input pixels -> original pixels of `box` (x0, y0, x1, y1): one box, or a
    (..., 4) tensor of boxes broadcast against the points (e.g. (B, 1, 4) for (B, K, 2) points)."""
    box = torch.as_tensor(box, dtype=torch.float64, device=points.device)  # box maths in double, as given
    scale = ((box[..., 2:] - box[..., :2]) / size).to(points.dtype)
    origin = box[..., :2].to(points.dtype)
    return (points + 0.5) * scale + origin - 0.5


def crop_to_tensor(image: Image.Image, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """`crop_resized` as a (3, size, size) float tensor in [0, 1]."""
    array = np.asarray(crop_resized(image, box, size), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def similarity_matrix(
    angle_deg: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, center: float
) -> torch.Tensor:
    """Batched 2x3 matrices A with A(p) = s R (p - c) + c + t, for points in pixels.

    Args:
        angle_deg, scale: (B,); shift: (B, 2) in pixels; center: rotation centre on both axes.
    """
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    linear = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)  # (B, 2, 2)
    c = torch.full((angle_deg.shape[0], 2), center, dtype=angle_deg.dtype, device=angle_deg.device)
    offset = c + shift - (linear @ c.unsqueeze(-1)).squeeze(-1)
    return torch.cat((linear, offset.unsqueeze(-1)), dim=-1)


def apply_affine(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) points through (B, 2, 3) matrices."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, :, 2].unsqueeze(1)


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine maps -> their inverses."""
    linear_inv = torch.linalg.inv(matrices[:, :, :2])
    return torch.cat((linear_inv, -(linear_inv @ matrices[:, :, 2:])), dim=-1)


def warp_images(images: torch.Tensor, matrices: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Warp (B, C, H, W) images so that a point p of the input lands at A(p) in the output.

    Bilinear, zero padding, pixel-centre convention (grid_sample with align_corners=False).
    """
    b, _, h, w = images.shape
    out = size or h
    inverse = invert_affine(matrices.to(images.dtype))
    ys, xs = torch.meshgrid(
        torch.arange(out, dtype=images.dtype, device=images.device),
        torch.arange(out, dtype=images.dtype, device=images.device),
        indexing="ij",
    )
    targets = torch.stack((xs, ys), -1).reshape(1, -1, 2).expand(b, -1, -1)
    sources = apply_affine(targets, inverse)  # output pixel -> input pixel
    norm = torch.tensor([w, h], dtype=images.dtype, device=images.device)
    grid = ((sources + 0.5) / norm * 2 - 1).reshape(b, out, out, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
