"""Inputs fuzz/fuzz_image.py found, pinned as ordinary tests (fuzz/regressions/fuzz_image/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landmarks.geometry import crop_resized
from serving.preprocess import crop_square, resolve_box


@pytest.mark.parametrize(
    ("width", "height", "box", "size"),
    [
        (1, 64, (0.0, -5.0, 40.0, 35.0), 63),  # crop_vs_crop_resized_1x64
        (1, 298, (0.000457763671875, -3.9997711181640625, 40.0, 35.99977111816406), 153),
    ],
)
def test_crop_square_is_within_one_level_of_crop_resized(width, height, box, size):
    # PIL's fixed-point resampling of the sub-image crop_square converts rounds a few values
    # differently from that of the whole image: off by one here, never more
    image = Image.new("RGB", (width, height), (10, 20, 30))
    square = resolve_box(box, width, height)
    pixels = crop_square(image, square, size).astype(int)
    reference = np.asarray(crop_resized(image, square, size)).astype(int)
    assert pixels.shape == (size, size, 3)
    assert np.abs(pixels - reference).max() <= 1


def test_crop_square_is_within_one_level_of_crop_resized_on_random_images():
    rng = np.random.default_rng(0)
    for _ in range(50):
        width, height, size = (int(v) for v in rng.integers(1, 90, size=3))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        side = rng.uniform(1, min(2 * size, 4 * max(width, height)))
        x0, y0 = rng.uniform(0.5 - side, width - 0.5), rng.uniform(0.5 - side, height - 0.5)  # overlaps
        square = resolve_box((x0, y0, x0 + side, y0 + side), width, height)
        pixels = crop_square(image, square, size).astype(int)
        reference = np.asarray(crop_resized(image, square, size)).astype(int)
        assert np.abs(pixels - reference).max() <= 1, (width, height, square, size)
