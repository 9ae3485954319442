"""Crops and random similarity augmentation on PIL images, with the matching point transform.

One 2x3 matrix M maps original pixels to input pixels (pixel centres at integers); the image is
resampled with PIL's affine transform, whose coefficients are in edge coordinates, hence the
0.5 shifts in `_pil_coefficients`. A test checks a bright dot lands where M sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["AugmentConfig", "crop_matrix", "points_box", "random_colour", "random_similarity", "transform_points",
           "warp_pil"]


@dataclass(frozen=True)
class AugmentConfig:
    rotation_sd: float = 15.0  # degrees, clipped at 2 sd
    scale_range: tuple[float, float] = (0.8, 1.2)
    shift_sd: float = 0.05  # fraction of the input size
    flip: bool = True
    # Per-channel gain drawn from [1 - colour, 1 + colour] (0 = off): lighting and white balance
    # differ between photos, and the joints do not depend on them.
    colour: float = 0.0

    def __post_init__(self) -> None:
        if (self.rotation_sd < 0 or self.shift_sd < 0 or not 0 <= self.colour < 1
                or not 0 < self.scale_range[0] <= self.scale_range[1]):
            raise ValueError(f"invalid augmentation {self}")


def points_box(points: np.ndarray, visible: np.ndarray) -> tuple[float, float, float, float]:
    """Edge-coordinate box around the visible points."""
    p = points[visible]
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max() + 1), float(p[:, 1].max() + 1))


def crop_matrix(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """3x3 matrix: original pixel centres -> input pixel centres for a crop of `box` to size x size."""
    x0, y0, x1, y1 = box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array([[sx, 0, (0.5 - x0) * sx - 0.5], [0, sy, (0.5 - y0) * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def random_similarity(rng: np.random.Generator, size: int, cfg: AugmentConfig) -> tuple[np.ndarray, bool]:
    """A random 3x3 similarity about the input centre, and whether to flip afterwards."""
    angle = np.deg2rad(np.clip(rng.normal(0, cfg.rotation_sd), -2 * cfg.rotation_sd, 2 * cfg.rotation_sd))
    scale = rng.uniform(*cfg.scale_range)
    shift = np.clip(rng.normal(0, cfg.shift_sd, size=2), -2 * cfg.shift_sd, 2 * cfg.shift_sd) * size
    c = (size - 1) / 2
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    m = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
    m[:2, 2] = np.array([c, c]) + shift - m[:2, :2] @ np.array([c, c])
    flip = bool(cfg.flip and rng.random() < 0.5)
    if flip:
        m = np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]]) @ m
    return m, flip


def random_colour(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """Per-channel RGB gains for one crop, or None when colour jitter is off (no draw from `rng`,
    so runs without it see the same crops as before the option existed)."""
    if not cfg.colour:
        return None
    return rng.uniform(1 - cfg.colour, 1 + cfg.colour, size=3)


def _pil_coefficients(matrix: np.ndarray) -> tuple[float, ...]:
    # PIL wants output-edge -> input-edge coordinates: shift by 0.5 around the inverse.
    inv = np.linalg.inv(matrix)
    to_centre = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    to_edge = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m = to_edge @ inv @ to_centre
    return tuple(m[:2].reshape(-1))


def warp_pil(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Resample `image` so that original point p lands at matrix @ p in a size x size output."""
    return image.convert("RGB").transform((size, size), Image.AFFINE, _pil_coefficients(matrix),
                                          resample=Image.BILINEAR)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]
