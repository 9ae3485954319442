"""Pure evaluation functions: PCK for the core; regressors and normalised errors for adapters."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LSP_TORSO", "PADDING_REACH", "WHITE", "background_pixels", "background_points", "pck", "point_spread"]

LSP_TORSO = (8, 3)  # right shoulder - left hip: the LSP convention for PCK's torso size
WHITE = 0.92  # every channel at least this: the white of a product photo
PADDING_REACH = 2  # px beside a crop's black padding bars that count as padding (the resized seam)


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, torso: tuple[int, int] = LSP_TORSO,
        threshold: float = 0.2) -> tuple[np.ndarray, float]:
    """Percentage of correct keypoints: error <= threshold * torso diameter.

    Args:
        pred, gt: (N, K, 2) in the same pixels; visible: (N, K) which ground-truth points count.
    Returns:
        (per-joint PCK in %, mean over all counted joints in %). Samples whose torso joints are
        not both annotated are left out.
    """
    a, b = torso
    ok_torso = visible[:, a] & visible[:, b]
    size = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
    ok_torso &= size > 1e-6
    err = np.linalg.norm(pred - gt, axis=-1) / np.where(ok_torso, size, 1.0)[:, None]
    counted = visible & ok_torso[:, None]
    hit = (err <= threshold) & counted
    per_joint = 100.0 * hit.sum(0) / np.maximum(counted.sum(0), 1)
    mean = 100.0 * hit.sum() / max(counted.sum(), 1)
    return per_joint, float(mean)


def background_pixels(images: torch.Tensor, white: float = WHITE) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> (N, S, S) bool: the background of an on-white product photo, i.e.
    near-white pixels (every channel >= `white`) and padding: the exactly black bars that square a
    wide photo's crop and the `PADDING_REACH` px beside them, where resizing blends bar and photo into
    a grey seam. One definition for the measure below and the training term that pulls points off it
    (`training.adapt_step.foreground_mask`)."""
    black = (images <= 0).all(dim=1, keepdim=True).float()
    size = 2 * PADDING_REACH + 1
    padding = F.max_pool2d(black, size, stride=1, padding=PADDING_REACH)[:, 0] > 0
    return (images >= white).all(dim=1) | padding


def background_points(images: np.ndarray, points: np.ndarray, radius: int = 3, white: float = WHITE,
                      share: float = 0.9) -> np.ndarray:
    """How many of each image's points sit on the background of an on-white product photo (such as
    UT-Zappos shoes): a point counts when at least `share` of the pixels within `radius` of it are
    background (`background_pixels`: near-white or padding). `images` (N, 3, S, S) in [0, 1],
    `points` (N, K, 2) in their pixels (x, y); points outside the crop count as background.
    Returns (N,) counts."""
    n, _, height, width = images.shape
    counts = np.zeros(n, dtype=np.int64)
    near_white = background_pixels(torch.from_numpy(np.ascontiguousarray(images)), white).numpy()  # (N, S, S)
    for i in range(n):
        for x, y in points[i]:
            cx, cy = round(float(x)), round(float(y))
            if not (0 <= cx < width and 0 <= cy < height):
                counts[i] += 1
                continue
            patch = near_white[i, max(0, cy - radius):cy + radius + 1, max(0, cx - radius):cx + radius + 1]
            counts[i] += int(patch.mean() >= share)
    return counts


def point_spread(points: np.ndarray, size: int) -> float:
    """How far each image's points lie from their own centroid: the root mean square distance, in px
    at 128 like the consistency error, averaged over images. `points` (N, K, 2) in the pixels of
    `size` x `size` crops. Read it beside consistency, which rewards points near the rotation centre
    (they move least): a consistency that falls while the spread falls too may mean the points
    gathered rather than followed the object better."""
    points = np.asarray(points, dtype=np.float64)
    rms = np.sqrt(((points - points.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean(-1))
    return float(rms.mean() * 128.0 / size)
