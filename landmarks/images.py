"""Pixels -> points: the steps the server's backends and the in-process `landmarks.Detector` share, so
both give the same numbers for the same image.

    decode_scale(image, box, size)       before decoding: a JPEG much larger than the crop is decoded smaller
    crop_square(image, box, size)        the square box of a PIL image -> (size, size, 3) uint8 pixels
    input_block(box, size, w, h)         where a box is an input-sized block of whole pixels (a copy suffices)
    crop_decoding(image, box, size, load)  the two together, for an image whose pixels are not decoded yet
    pixels_to_images(pixels)             (B, S, S, 3) uint8 -> (B, 3, S, S) float in [0, 1], the model's input
    locate_in_boxes(heatmaps, boxes, S)  heatmaps -> points in the pixels of the image each crop came from

The model in between is the folded network (`landmarks.projection.fold`) however it is run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from landmarks.geometry import crop_resized, input_to_original
from landmarks.heatmaps import locate

__all__ = ["Box", "crop_decoding", "crop_square", "decode_scale", "images_to_pixels", "input_block",
           "locate_in_boxes", "pixels_to_images"]

Box = tuple[float, float, float, float]


def decode_scale(image: Image.Image, box: Box, size: int) -> float:
    """For a JPEG whose pixels are not decoded yet: have libjpeg decode it at 1/2, 1/4 or 1/8 of its
    size (DCT scaling: each block is averaged, much as `crop_square` reduces, for a fraction of the work)
    when the square `box` stays at least 2x `size` at that scale, the rule by which `crop_square` reduces
    a large box itself. Returns the scale taken, 1.0 for none (other formats, decoded images, small
    boxes); the box in the decoded image's pixels is then `box / scale`."""
    factor = (box[2] - box[0]) // (2 * size)
    scale = next((s for s in (8, 4, 2) if factor >= s), 1)
    if scale == 1 or image.format != "JPEG":
        return 1.0
    width, height = image.size
    drafted = image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    return 1.0 if drafted is None else width / drafted[1][2]  # draft's box: the original size / scale


def crop_decoding(image: Image.Image, box: Box, size: int, load: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """`crop_square` of an image whose header alone is read: decoded by `load` (which raises the caller's
    errors and returns RGB), smaller where `decode_scale` allows, and the box mapped to that scale."""
    scale = decode_scale(image, box, size)
    return crop_square(load(image), tuple(v / scale for v in box), size)


def input_block(box: Box, size: int, width: int, height: int) -> tuple[int, int] | None:
    """(x0, y0) when the square `box` is a `size` x `size` block of whole pixels inside a width x height
    image (a client that crops itself): its crop is then a copy of those pixels, nothing resampled."""
    x0, y0, x1, y1 = box
    if x1 - x0 == size and x0 == int(x0) and y0 == int(y0) and x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return int(x0), int(y0)
    return None


def crop_square(image: Image.Image, box: Box, size: int) -> np.ndarray:
    """`box` (square, edge coordinates, may extend past the image) -> (size, size, 3) uint8 pixels.

    The pixels of `crop_resized(image, box, size)` (and so `crop_to_tensor` once scaled to [0, 1],
    `pixels_to_images`) to within one 8-bit level for boxes up to 2x the input size: only the part
    under the box, plus the resampling filter's reach, is converted (and PIL's resize of that part
    rounds a few values differently from that of the whole image). Larger boxes are first reduced
    by an integer factor f (box average), which keeps memory bounded. A box that is already an
    input-sized block of whole pixels inside the image (a client that crops itself) is only copied.
    """
    x0, y0, x1, y1 = box
    width, height = image.size
    if (block := input_block(box, size, width, height)) is not None:
        return np.array(image.crop((*block, block[0] + size, block[1] + size)))
    factor = max(1, int((x1 - x0) // (2 * size)))
    # keep the resampling filter's support around the box (its radius is the downscale ratio)
    margin = factor * (math.ceil((x1 - x0) / factor / size) + 2)
    ix0, iy0 = max(0, math.floor(x0) - margin), max(0, math.floor(y0) - margin)
    ix1, iy1 = min(width, math.ceil(x1) + margin), min(height, math.ceil(y1) + margin)
    ix0, iy0 = ix0 - ix0 % factor, iy0 - iy0 % factor  # align to the reduction grid
    region = (ix0, iy0, ix1, iy1)
    sub = image if region == (0, 0, width, height) else image.crop(region)  # the whole image: no copy
    if factor > 1:
        sub = sub.reduce(factor)
    local = ((x0 - ix0) / factor, (y0 - iy0) / factor, (x1 - ix0) / factor, (y1 - iy0) / factor)
    return np.array(crop_resized(sub, local, size))


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
