"""An image's square crop as the model's input pixels, with PIL and numpy: the steps the server and
`landmarks.Detector` share before the graph, so both give the same numbers for the same image.

    square_box(box)                      the square around a box the model sees
    decode_scale(image, box, size)       before decoding: a JPEG much larger than the crop is decoded smaller
    crop_square(image, box, size)        the square box of a PIL image -> (size, size, 3) uint8 pixels
    input_block(box, size, w, h)         where a box is an input-sized block of whole pixels (a copy suffices)
    crop_decoding(image, box, size, load)  the two together, for an image whose pixels are not decoded yet

A box is (x0, y0, x1, y1) in *edge* coordinates of the original image (the whole image is (0, 0, W, H)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["Box", "crop_decoding", "crop_resized", "crop_square", "decode_scale", "images_to_pixels", "input_block",
           "square_box"]

Box = tuple[float, float, float, float]


def square_box(box: tuple[float, float, float, float], margin: float = 0.0) -> tuple[float, float, float, float]:
    """The square with the box's centre and side max(w, h) * (1 + margin)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


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


def images_to_pixels(images: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) floats in [0, 1] -> (B, S, S, 3) uint8, rounded: what a client would send."""
    pixels = np.rint(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
