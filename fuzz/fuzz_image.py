"""Fuzz the server's request input handling: image decoding, boxes, crops, name validation.

    .venv/bin/python fuzz/fuzz_image.py fuzz/corpus/fuzz_image -runs=2000
    .venv/bin/python fuzz/fuzz_image.py NEW_DIR fuzz/corpus/fuzz_image -max_total_time=300

Input layout (fuzz/make_seeds.py writes seeds in it): byte 0 picks the mode (mod 4), the next
PARAM_LEN bytes are parameters (read with atheris.FuzzedDataProvider; in raw mode the first 12 are
three little-endian int32: height, width, channels), the rest is the payload:

  0 encoded  payload -> `decode_encoded(payload, MAX_PIXELS, min_side)`, then box and crop below,
             then the server's path for the same bytes and box (`decode_crop`)
  1 raw      payload -> `decode_raw(payload, height, width, channels, MAX_PIXELS, min_side)`; a
             parameter bit pads/trims the payload to the size the header asks for, so decodes succeed
  2 box      payload = 4 doubles (or 4 float32, or FuzzedDataProvider floats): any bit pattern,
             NaN, inf, huge -> `resolve_box(box, width, height)`; crop on a blank image if small
  3 names    payload decoded as text -> `validate_category`, `validate_version` (both modes)

After a decode: `resolve_box` with a box from the parameters (None, positions in and around the
image, or NaN/inf/huge), then `crop_square(image, square, size)`.

Contract (anything else is a finding):
- the only exception is `serving.errors.ServingError` with code INVALID_ARGUMENT;
- a decode returns an RGB PIL image within MAX_PIXELS and min_side whose pixels can be read;
- resolve_box returns 4 finite floats forming a square of side >= 1 that overlaps the image;
- crop_square returns a (size, size, 3) uint8 array, within one 8-bit level of `crop_resized`
  (what training uses) when the box is at most 2x size;
- an accepted category / version is exactly the input, matches CATEGORY_RE / VERSION_RE and is
  safe as a file name (no '/', '\\', NUL, no leading '.', at most 64 characters).
"""

from __future__ import annotations

import math
import struct
import sys

import _common
import atheris

# Not instrumented: large, native, and not what is under test.
import grpc
import numpy as np
import torch

with atheris.instrument_imports(include=["PIL", "serving", "landmarks"]):
    from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401

    from landmarks.geometry import crop_resized
    from landmarks.v1 import landmarks_pb2 as pb
    from serving.errors import ServingError
    from serving.names import CATEGORY_RE, VERSION_RE, validate_category, validate_version
    from serving.preprocess import crop_square, decode_crop, decode_encoded, decode_raw, resolve_box
    from serving.query import DetectQuery

torch.set_num_threads(1)

MAX_PIXELS = 4_000_000  # small, to stay fast; the server's default is larger
PARAM_LEN = _common.IMAGE_PARAM_LEN
MODE_ENCODED, MODE_RAW, MODE_BOX = _common.MODE_ENCODED, _common.MODE_RAW, _common.MODE_BOX
MAX_CROP = 160  # crop sizes 1..MAX_CROP; the model inputs are 32..128
SPECIAL = (math.nan, math.inf, -math.inf, 1e308, -1e308, 3.4e38, 0.0, -0.0, 5e-324, 2.0**53, -1.0, 1e-7)


def allowed(exc: ServingError) -> None:
    if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
        raise AssertionError(
            f"ServingError with code {exc.code}, not INVALID_ARGUMENT: {exc.message}"
        ) from exc


def coordinate(fdp: atheris.FuzzedDataProvider, extent: int) -> float:
    """Mostly positions in and around the image (-0.5 .. 1.5 of its extent), sometimes a special float."""
    sel = fdp.ConsumeIntInRange(0, 255)
    if sel < len(SPECIAL):
        return SPECIAL[sel]
    return extent * (-0.5 + 2 * fdp.ConsumeIntInRange(0, 65535) / 65535)


def box_from(fdp: atheris.FuzzedDataProvider, width: int, height: int) -> tuple[float, ...] | None:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return None
    return (coordinate(fdp, width), coordinate(fdp, height), coordinate(fdp, width), coordinate(fdp, height))


def check_square(square: object, width: int, height: int) -> None:
    ok = (
        isinstance(square, tuple)
        and len(square) == 4
        and all(isinstance(v, float) and math.isfinite(v) for v in square)
    )
    if not ok:
        raise AssertionError(f"resolve_box returned {square!r}")
    x0, y0, x1, y1 = square
    side = x1 - x0
    if not (side >= 1 and math.isclose(side, y1 - y0, rel_tol=1e-9, abs_tol=1e-9)):
        raise AssertionError(f"resolve_box returned a non-square or empty box {square!r}")
    if not (x1 > 0 and y1 > 0 and x0 < width and y0 < height):
        raise AssertionError(f"resolve_box returned {square!r}, outside the {width}x{height} image")


def resolved(box: tuple[float, ...] | None, width: int, height: int) -> tuple[float, ...] | None:
    """`resolve_box`'s square, checked; None where it (rightly) refused the box."""
    try:
        square = resolve_box(box, width, height)
    except ServingError as exc:
        allowed(exc)
        return None
    check_square(square, width, height)
    return square


def crop_and_check(image: Image.Image, square: tuple[float, ...], size: int) -> None:
    width, height = image.size
    pixels = crop_square(image, square, size)
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and tuple(pixels.shape) == (size, size, 3)
    ):
        raise AssertionError(
            f"crop_square gave {type(pixels).__name__} {getattr(pixels, 'shape', '')} "
            f"{getattr(pixels, 'dtype', '')} for size {size}"
        )
    if square[2] - square[0] <= 2 * size:
        # within one 8-bit level: PIL's fixed-point resampling of a sub-image differs from that of
        # the whole by 1 now and then (fuzz/regressions/fuzz_image/README.md), never by more
        reference = np.asarray(crop_resized(image, square, size)).astype(int)
        diff = np.abs(pixels.astype(int) - reference).max()
        if diff > 1:
            raise AssertionError(
                f"crop_square differs from crop_resized by up to {diff} for box {square} "
                f"on a {width}x{height} image at size {size}"
            )


def served_crop_and_check(payload: bytes, square: tuple[float, ...], size: int, min_side: int) -> None:
    """The server's own path for the same bytes and box (`decode_crop`: header, box, a JPEG decoded at
    1/2-1/8 scale where the crop allows, crop): a (size, size, 3) uint8 crop or INVALID_ARGUMENT."""
    request = pb.DetectRequest(category="fuzz")
    request.image.encoded = payload
    request.box.x0, request.box.y0, request.box.x1, request.box.y1 = square  # float32 on the wire
    try:
        pixels, _ = decode_crop(DetectQuery.from_proto(request), size, MAX_PIXELS, min_side)
    except ServingError as exc:
        allowed(exc)
        return
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)):
        raise AssertionError(f"decode_crop gave {type(pixels).__name__} {getattr(pixels, 'shape', '')} for size {size}")


def check_decoded(image: object, min_side: int) -> None:
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise AssertionError(f"decode returned {image!r}")
    width, height = image.size
    if width * height > MAX_PIXELS or min(width, height) < min_side:
        raise AssertionError(f"decode returned a {width}x{height} image (limits {MAX_PIXELS}, {min_side})")
    if np.asarray(image).shape != (height, width, 3):
        raise AssertionError(f"decoded pixels have shape {np.asarray(image).shape}")


def fuzz_decode(mode: int, params: bytes, payload: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(params)
    if mode == MODE_RAW:  # any int32, as the wire's uint32 fields can carry and more
        height, width, channels = fdp.ConsumeInt(4), fdp.ConsumeInt(4), fdp.ConsumeInt(4)
    min_side = fdp.ConsumeIntInRange(1, 16)
    size = fdp.ConsumeIntInRange(1, MAX_CROP)
    try:
        if mode == MODE_ENCODED:
            image = decode_encoded(payload, MAX_PIXELS, min_side)
        else:
            expected = height * width * channels
            if fdp.ConsumeBool() and 0 < expected <= 1 << 16:
                payload = (
                    (payload * (expected // max(1, len(payload)) + 1))[:expected]
                    if payload
                    else bytes(expected)
                )
            image = decode_raw(payload, height, width, channels, MAX_PIXELS, min_side)
    except ServingError as exc:
        allowed(exc)
        return
    check_decoded(image, min_side)
    square = resolved(box_from(fdp, *image.size), *image.size)
    if square is not None:
        crop_and_check(image, square, size)
        if mode == MODE_ENCODED:
            served_crop_and_check(payload, square, size, min_side)


def fuzz_box(params: bytes, payload: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(params)
    width, height = fdp.ConsumeIntInRange(1, 5000), fdp.ConsumeIntInRange(1, 5000)
    size = fdp.ConsumeIntInRange(1, MAX_CROP)
    if len(payload) >= 32:
        box = struct.unpack("<4d", payload[:32])
    elif len(payload) >= 16:
        box = struct.unpack("<4f", payload[:16])  # what the wire format carries
    else:
        box = tuple(atheris.FuzzedDataProvider(payload).ConsumeFloat() for _ in range(4))
    square = resolved(box, width, height)
    if square is not None and width * height <= 4096:
        crop_and_check(Image.new("RGB", (width, height), (10, 20, 30)), square, size)


def fuzz_names(params: bytes, payload: bytes) -> None:
    codec = ("utf-8", "latin-1", "utf-16-le")[params[0] % 3] if params else "utf-8"
    text = payload.decode(codec, "surrogateescape" if codec == "utf-8" else "replace")
    calls = (
        (validate_category, CATEGORY_RE, {}),
        (validate_version, VERSION_RE, {}),
        (validate_version, VERSION_RE, {"allow_shipped": False}),
    )
    for validate, pattern, kwargs in calls:
        try:
            out = validate(text, **kwargs)
        except ServingError as exc:
            allowed(exc)
            continue
        unsafe = (
            "/" in out
            or "\\" in out
            or "\x00" in out
            or out.startswith(".")
            or len(out) > 64
            or out.endswith(".safetensors")
        )
        if out != text or not pattern.fullmatch(out) or unsafe:
            raise AssertionError(f"{validate.__name__}{kwargs or ''} accepted {text!r} (returned {out!r})")
        if validate is validate_category and out == "core":
            raise AssertionError("validate_category accepted 'core'")
        if kwargs and out == "shipped":
            raise AssertionError("validate_version(allow_shipped=False) accepted 'shipped'")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, params, payload = (
        data[0] % 4,
        data[1 : 1 + PARAM_LEN].ljust(PARAM_LEN, b"\0"),
        data[1 + PARAM_LEN :],
    )
    if mode in (MODE_ENCODED, MODE_RAW):
        fuzz_decode(mode, params, payload)
    elif mode == MODE_BOX:
        fuzz_box(params, payload)
    else:
        fuzz_names(params, payload)


def main() -> None:
    atheris.Setup(_common.argv_with_defaults(sys.argv, max_len=8192), TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
