"""Crops and similarity warps, all in the pixel-centre convention of `landmarks.heatmaps`.

A box is (x0, y0, x1, y1) in *edge* coordinates of the original image (the whole image is
(0, 0, W, H)). Cropping the box to an S x S input maps an original point x (pixel centres at
integers) to  u = (x + 0.5 - x0) * S / (x1 - x0) - 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


def square_box(box: tuple[float, float, float, float], margin: float = 0.0) -> tuple[float, float, float, float]:
    """The square with the box's centre and side max(w, h) * (1 + margin)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


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


def crop_resized(image: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """Crop `box` (may extend past the image; zero padding) and resize to a size x size RGB image.

    Uses PIL's antialiased bilinear resize, so large photos are not aliased.
    """
    if image.mode != "RGB":  # (convert would copy an RGB image too)
        image = image.convert("RGB")
    x0, y0, x1, y1 = box
    w, h = image.size
    pad_l, pad_t = max(0, -math.floor(x0)), max(0, -math.floor(y0))
    pad_r, pad_b = max(0, math.ceil(x1) - w), max(0, math.ceil(y1) - h)
    if pad_l or pad_t or pad_r or pad_b:
        canvas = Image.new("RGB", (w + pad_l + pad_r, h + pad_t + pad_b))
        canvas.paste(image, (pad_l, pad_t))
        image, box = canvas, (x0 + pad_l, y0 + pad_t, x1 + pad_l, y1 + pad_t)
    return image.resize((size, size), resample=Image.BILINEAR, box=box)


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
