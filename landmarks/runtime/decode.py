"""Heatmaps -> points in the pixels of the client's image, in numpy: the last steps of every
category graph (`landmarks.runtime.graph` builds the same arithmetic as ONNX nodes), and the
reference they are tested against.

Convention (`landmarks.heatmaps`): pixel centres at integers; a heatmap of stride s maps to its input
as x_input = (x_heatmap + 0.5) * s - 0.5; a box (x0, y0, x1, y1) is in edge coordinates of the image
the crop was cut from.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BETA", "locate", "locate_in_boxes", "to_original"]

BETA = 10.0  # the soft-argmax's inverse temperature (landmarks.heatmaps.PAPER_BETA)


def locate(heatmaps: np.ndarray, input_size: int, beta: float = BETA) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W) raw heatmaps of an input_size crop -> soft-argmax points in the crop's pixels
    (..., 2) and confidences, the peak of softmax(beta * heatmap), (...), float32."""
    *lead, h, w = heatmaps.shape
    logits = beta * heatmaps.reshape(*lead, h * w).astype(np.float32)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    index = np.arange(h * w)
    grid = np.stack((index % w, index // w), axis=-1).astype(np.float32)  # (x, y) of each cell
    points = probs @ grid
    stride = np.float32(input_size / w)
    return (points + 0.5) * stride - 0.5, probs.max(axis=-1)


def to_original(points: np.ndarray, boxes: np.ndarray, input_size: int) -> np.ndarray:
    """(B, K, 2) points in crop pixels -> the pixels of the (B, 4) boxes (x0, y0, x1, y1) they were cut
    from; the box arithmetic in float64, the points' in float32."""
    boxes = np.asarray(boxes, np.float64)[:, None, :]
    scale = ((boxes[..., 2:] - boxes[..., :2]) / input_size).astype(np.float32)
    return (points + 0.5) * scale + boxes[..., :2].astype(np.float32) - 0.5


def locate_in_boxes(heatmaps: np.ndarray, boxes: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, h, w) heatmaps of input_size crops of `boxes` -> (B, K, 2) points in the images' pixels and
    (B, K) confidences."""
    points, confidence = locate(heatmaps, input_size)
    return to_original(points, boxes, input_size), confidence
