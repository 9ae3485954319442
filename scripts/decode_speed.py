"""Decoding a client's image: PIL against OpenCV (`cv2.imdecode`), for the sizes clients send.

    python scripts/decode_speed.py                 # JPEG q90 and PNG at 256 .. 1920 px, 5 rounds
    python scripts/decode_speed.py --rounds 9 --iters 20

For each format and size: a photo-like test image (smooth gradients plus noise, so JPEG and PNG
sizes are realistic) is encoded once; then, alternating block by block (a shared VM's speed drifts),
each decoder turns the bytes into an H x W x 3 uint8 RGB array with EXIF orientation applied,
which is what the server needs: PIL `Image.open` + `ImageOps.exif_transpose` + `np.asarray`;
OpenCV `cv2.imdecode(IMREAD_COLOR)` (applies EXIF orientation itself) + BGR -> RGB. Medians are
printed, and the largest pixel difference between the two (JPEG decoders may round differently).
One thread each (the server decodes in handler threads).

"hot path" times decoding the whole image and cropping: `serving.preprocess.decode_encoded` (PIL,
pixels as stored) + `crop_square` to `--crop` px, against OpenCV (`IMREAD_IGNORE_ORIENTATION`,
the same pixels) + `Image.fromarray` (the crop takes a PIL image) + the same crop. "served" is
what the server does per request now, `serving.preprocess.decode_crop`: a JPEG much larger than the
crop is decoded at 1/2-1/8 scale (libjpeg's DCT scaling); "crop diff" is its crop's mean and largest
difference from the whole decode's, in 8-bit levels.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import cv2
import numpy as np
from PIL import Image, ImageOps


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 37 + c) * np.cos(y / 53 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def with_pil(data: bytes) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def with_cv2(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


DECODERS = {"PIL": with_pil, "OpenCV": with_cv2}


def hot_paths(size: int) -> dict:
    from serving.preprocess import crop_square, decode_encoded, resolve_box

    def pil(data: bytes):
        image = decode_encoded(data, 50_000_000, 4)
        return crop_square(image, resolve_box(None, image.width, image.height), size)

    def ocv(data: bytes):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return crop_square(image, resolve_box(None, image.width, image.height), size)

    def served(data: bytes):
        from landmarks.v1 import landmarks_pb2 as pb
        from serving.preprocess import decode_crop

        request = pb.DetectRequest(category="bench")
        request.image.encoded = data
        return decode_crop(request, size, 50_000_000, 4)[0]

    return {"PIL hot path": pil, "OpenCV hot path": ocv, "served": served}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256x256,640x480,1280x960,1920x1080")
    parser.add_argument("--formats", default="JPEG,PNG")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10, help="decodes per block")
    parser.add_argument("--crop", type=int, default=64, help="hot path: crop size (default: the shipped adapters')")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"PIL {Image.__version__}, OpenCV {cv2.__version__}; median ms per decode to an RGB array")
    paths = {**DECODERS, **hot_paths(args.crop)}
    print(f"{'format':>6} {'size':>10} {'KB':>6} {'PIL':>8} {'OpenCV':>8} {'PIL/OpenCV':>10} {'max diff':>8} "
          f"{'PIL hot path':>12} {'OpenCV hot path':>15} {'ratio':>6} {'served':>7} {'crop diff':>10}")
    for fmt in args.formats.split(","):
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            data = encode(photo(w, h), fmt)
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, decode in paths.items():
                    decode(data)
                    for _ in range(args.iters):
                        t0 = time.perf_counter()
                        decode(data)
                        times[name].append((time.perf_counter() - t0) * 1e3)
            diff = int(np.abs(with_pil(data).astype(int) - with_cv2(data).astype(int)).max())
            pil, ocv = statistics.median(times["PIL"]), statistics.median(times["OpenCV"])
            hot_pil, hot_ocv = statistics.median(times["PIL hot path"]), statistics.median(times["OpenCV hot path"])
            served = statistics.median(times["served"])
            crop_diff = np.abs(paths["served"](data).astype(int) - paths["PIL hot path"](data))
            print(f"{fmt:>6} {size:>10} {len(data) / 1e3:>6.0f} {pil:>8.2f} {ocv:>8.2f} {pil / ocv:>10.2f} {diff:>8} "
                  f"{hot_pil:>12.2f} {hot_ocv:>15.2f} {hot_pil / hot_ocv:>6.2f} {served:>7.2f} "
                  f"{crop_diff.mean():>5.2f}/{crop_diff.max():<4}", flush=True)


if __name__ == "__main__":
    main()
