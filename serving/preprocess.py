"""Client bytes -> model input, safely.

Decoding: the header is read first and its size checked against the pixel budget before any
pixel is decoded (a 20000 x 20000 PNG of a few hundred bytes is rejected without allocating);
truncated or garbage data, unsupported formats, too small images and inconsistent raw buffers
raise `ServingError(INVALID_ARGUMENT)` naming the field and the reason.

A JPEG much larger than the model input is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
`landmarks.runtime.crops.decode_scale`): a 1920x1080 photo costs a few ms instead of ~20.

Cropping: the box is made square (`landmarks.runtime.crops.square_box`), and only the part of the
image under it is converted, reduced by an integer factor when it is much larger than the model
input (box filter, so no aliasing and no big intermediate canvas), then resized with
`landmarks.runtime.crops.crop_resized`, once, at the input size of the adapter version the request
leased (`landmarks.runtime.crops.crop_square`, which the in-process `landmarks.Detector` uses too). A raw
image whose box is already an input-sized block of whole pixels is sliced from the request's bytes,
the same pixels without a PIL image. Each
request keeps its crop as uint8 pixels, and a batch goes to the backend as such: scaling to [0, 1]
is the first step of the backend's graph, and mapping the points back to the client's pixels its last (`serving.backends`).
"""

from __future__ import annotations

import io
import math

import grpc
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from landmarks.runtime.crops import (  # shared with landmarks.Detector
    crop_decoding,
    crop_square,
    input_block,
    square_box,
)
from serving.errors import Reason, ServingError
from serving.query import Box, DetectQuery

__all__ = [
    "ALLOWED_FORMATS",
    "crop_square",
    "decode_crop",
    "decode_encoded",
    "decode_raw",
    "load_rgb",
    "open_encoded",
    "resolve_box",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
ImageFile.LOAD_TRUNCATED_IMAGES = False

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _bad(field: str, why: str, reason: Reason) -> ServingError:
    return ServingError(_INVALID, reason, why, field=field)


def _check_size(field: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width <= 0 or height <= 0:
        raise _bad(field, f"image is {width}x{height}; it needs positive width and height",
                   Reason.IMAGE_TOO_SMALL)
    if width * height > max_pixels:
        raise _bad(field, f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over this server's limit of "
                          f"{max_pixels / 1e6:.1f} MP; downscale it before sending", Reason.IMAGE_TOO_LARGE)
    if min(width, height) < min_side:
        raise _bad(field, f"image is {width}x{height}; both sides must be at least {min_side} px",
                   Reason.IMAGE_TOO_SMALL)


def open_encoded(data: bytes, max_pixels: int, min_side: int, field: str = "image.encoded") -> Image.Image:
    """JPEG/PNG/WebP/BMP bytes -> a PIL image whose header is read and size checked, pixels not yet
    decoded (`load_rgb`); raises ServingError."""
    if not data:
        raise _bad(field, "empty; send the bytes of a JPEG, PNG, WebP or BMP file", Reason.IMAGE_MISSING)
    try:
        # Only the header is parsed here. PIL itself refuses > 2 * Image.MAX_IMAGE_PIXELS (~179 MP);
        # our own, lower limit is checked right after, still before decoding.
        image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise _bad(field, f"image header declares too many pixels ({exc}); over this server's limit of "
                          f"{max_pixels / 1e6:.1f} MP", Reason.IMAGE_TOO_LARGE) from None
    except UnidentifiedImageError:
        head = data[:8]
        raise _bad(field, f"not a JPEG, PNG, WebP or BMP image ({len(data)} bytes starting {head!r})",
                   Reason.IMAGE_UNDECODABLE) from None
    except Exception as exc:  # noqa: BLE001  PIL raises many types for broken headers
        raise _bad(field, f"image header is truncated or corrupt ({exc})", Reason.IMAGE_UNDECODABLE) from None
    width, height = image.size
    _check_size(field, width, height, max_pixels, min_side)
    return image


def load_rgb(image: Image.Image, field: str = "image.encoded") -> Image.Image:
    """`open_encoded`'s image, its pixels decoded, as RGB (raises ServingError)."""
    try:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # noqa: BLE001  OSError "truncated", SyntaxError, ValueError, zlib errors
        raise _bad(field, f"{image.format} data is truncated or corrupt ({exc})", Reason.IMAGE_UNDECODABLE) from None


def decode_encoded(data: bytes, max_pixels: int, min_side: int, field: str = "image.encoded") -> Image.Image:
    """JPEG/PNG/WebP/BMP bytes -> a fully decoded RGB PIL image (raises ServingError)."""
    return load_rgb(open_encoded(data, max_pixels, min_side, field), field)


def _check_raw(pixels: bytes, height: int, width: int, channels: int, max_pixels: int, min_side: int,
               field: str) -> None:
    if channels not in (1, 3, 4):
        raise _bad(f"{field}.channels", f"must be 1 (grey), 3 (RGB) or 4 (RGBA), got {channels}",
                   Reason.RAW_IMAGE_INVALID)
    _check_size(field, width, height, max_pixels, min_side)
    expected = height * width * channels
    if len(pixels) != expected:
        raise _bad(f"{field}.pixels", f"has {len(pixels)} bytes, but {height}x{width}x{channels} needs {expected}",
                   Reason.RAW_IMAGE_INVALID)


def decode_raw(pixels: bytes, height: int, width: int, channels: int, max_pixels: int, min_side: int,
               field: str = "image.raw") -> Image.Image:
    """H x W x C uint8 bytes (C = 1, 3 or 4) -> an RGB PIL image."""
    _check_raw(pixels, height, width, channels, max_pixels, min_side, field)
    return _raw_image(pixels, height, width, channels)


def _raw_image(pixels: bytes, height: int, width: int, channels: int) -> Image.Image:
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    image = Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)
    return image if mode == "RGB" else image.convert("RGB")


def decode_crop(query: DetectQuery, size: int, max_pixels: int, min_side: int) -> tuple[np.ndarray, Box]:
    """A request's image (`encoded` or `raw`) and box -> its crop at `size`, (size, size, 3) uint8, and
    the square box in the image's pixels (raises ServingError). A JPEG much larger than the crop is
    decoded at 1/2, 1/4 or 1/8 scale (`landmarks.runtime.crops.decode_scale`)."""
    box = query.box
    if query.encoded is not None:
        image = open_encoded(query.encoded, max_pixels, min_side)
        square = resolve_box(box, image.width, image.height)
        return crop_decoding(image, square, size, load_rgb), square
    if query.raw is None:
        raise _bad("image", "missing; set image.encoded or image.raw", Reason.IMAGE_MISSING)
    pixels, height, width, channels = query.raw
    _check_raw(pixels, height, width, channels, max_pixels, min_side, "image.raw")
    square = resolve_box(box, width, height)
    if (block := input_block(square, size, width, height)) is not None:
        # a client that crops itself: the block's bytes as they are, without a PIL image around them
        # (after an idle gap 0.09 ms instead of 0.22 for a 128 px block; docs/benchmark.md)
        x0, y0 = block
        crop = np.frombuffer(pixels, np.uint8).reshape(height, width, channels)[y0:y0 + size, x0:x0 + size]
        # as PIL converts: grey repeated into R, G and B; RGBA's alpha dropped
        return np.ascontiguousarray(np.repeat(crop, 3, axis=2) if channels == 1 else crop[..., :3]), square
    return crop_square(_raw_image(pixels, height, width, channels), square, size), square


def resolve_box(box: Box | None, width: int, height: int, field: str = "box") -> Box:
    """The square box actually used: the given box (or the whole image), made square."""
    if box is None:
        box = (0.0, 0.0, float(width), float(height))
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise _bad(field, f"coordinates must be finite, got {box}", Reason.BOX_INVALID)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise _bad(field, f"needs x1 > x0 and y1 > y0 (at least 1 px), got ({x0}, {y0}, {x1}, {y1})",
                   Reason.BOX_INVALID)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise _bad(field, f"({x0}, {y0}, {x1}, {y1}) lies outside the {width}x{height} image", Reason.BOX_INVALID)
    if max(x1 - x0, y1 - y0) > 4 * max(width, height):
        raise _bad(field, f"is more than 4x larger than the {width}x{height} image", Reason.BOX_INVALID)
    return square_box((x0, y0, x1, y1))
