"""Pure evaluation functions: PCK for the core; regressors and normalised errors for adapters."""

from __future__ import annotations

import numpy as np

__all__ = ["LSP_TORSO", "background_points", "pck"]

LSP_TORSO = (8, 3)  # right shoulder - left hip: the LSP convention for PCK's torso size


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


def _padding(images: np.ndarray, reach: int = 2) -> np.ndarray:
    """(N, 3, S, S) -> (N, S, S): exactly black pixels (the bars that square a wide photo's crop) and
    those within `reach` px of one (resizing blends bar and photo into a grey seam)."""
    black = (images <= 0).all(axis=1)
    out = black.copy()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            shifted = np.zeros_like(black)
            h, w = black.shape[1:]
            shifted[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
                black[:, max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            out |= shifted
    return out


def background_points(images: np.ndarray, points: np.ndarray, radius: int = 3, white: float = 0.92,
                      share: float = 0.9) -> np.ndarray:
    """How many of each image's points sit on a near-white background (on-white product photos such
    as UT-Zappos shoes): a point counts when at least `share` of the pixels within `radius` of it
    have every channel >= `white` or are padding (exactly black, the bars that square a wide photo's
    crop, or within 2 px of it: the grey seam resizing leaves between bar and photo). `images` (N, 3, S, S) in [0, 1], `points` (N, K, 2) in their pixels
    (x, y); points outside the crop count as background. Returns (N,) counts."""
    n, _, height, width = images.shape
    counts = np.zeros(n, dtype=np.int64)
    near_white = (images >= white).all(axis=1) | _padding(images)  # (N, S, S)
    for i in range(n):
        for x, y in points[i]:
            cx, cy = round(float(x)), round(float(y))
            if not (0 <= cx < width and 0 <= cy < height):
                counts[i] += 1
                continue
            patch = near_white[i, max(0, cy - radius):cy + radius + 1, max(0, cx - radius):cx + radius + 1]
            counts[i] += int(patch.mean() >= share)
    return counts
