"""Pixels <-> the torch network's input and heatmaps -> points, in torch: the reference the runtime's
graph (`landmarks.runtime`) is tested against, and training's helpers.

    pixels_to_images(pixels)             (B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1], the model's input
    images_to_pixels(images)             the inverse, rounded to 8 bits: what a client would send
    locate_in_boxes(heatmaps, boxes, S)  heatmaps -> points in the pixels of the image each crop came from

The crop itself (`crop_square`, `crop_decoding`, ...) is `landmarks.runtime.crops`, re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch

from landmarks.geometry import input_to_original
from landmarks.heatmaps import locate
from landmarks.runtime.crops import Box, crop_decoding, crop_square, decode_scale, input_block  # re-exported

__all__ = ["Box", "crop_decoding", "crop_square", "decode_scale", "images_to_pixels", "input_block",
           "locate_in_boxes", "pixels_to_images"]


def pixels_to_images(pixels: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1], channels_last in memory (no copy but the
    conversion): the same numbers as `landmarks.geometry.crop_to_tensor`."""
    return pixels.permute(0, 3, 1, 2).float().div(255)


def images_to_pixels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [0, 1] -> (B, S, S, 3) uint8 (rounded, contiguous): what a client would
    send for those crops; `pixels_to_images` of it gives them back to the 8-bit rounding."""
    pixels = images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())


def locate_in_boxes(heatmaps: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, h, w) heatmaps of size x size crops of (B, 4) boxes (edge coordinates of the original
    images) -> (B, K, 2) soft-argmax points in those images' pixels and (B, K) confidences."""
    points, confidence = locate(heatmaps, size)
    return input_to_original(points, boxes.unsqueeze(1), size), confidence
