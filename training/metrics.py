"""Pure evaluation functions: PCK for the core; regressors and normalised errors for adapters."""

from __future__ import annotations

import numpy as np

__all__ = ["LSP_TORSO", "pck"]

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
