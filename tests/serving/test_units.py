"""Pure pieces: image decoding and cropping, the folded-weights cache, name validation."""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from landmarks.geometry import crop_to_tensor, input_to_original, original_to_input
from landmarks.images import pixels_to_images
from landmarks.v1 import landmarks_pb2 as pb
from serving.errors import ServingError
from serving.model_cache import CacheFullError, ModelCache
from serving.names import validate_category, validate_version
from serving.preprocess import crop_square, decode_crop, decode_encoded, decode_raw, resolve_box
from serving.query import DetectQuery
from tests.serving.helpers import jpeg_bytes, png_bytes, png_header

MAXPIX, MINSIDE = 50_000_000, 4


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code


@pytest.mark.parametrize("data, needle", [
    (b"", "empty"),
    (b"hello, I am text and not an image at all", "not a JPEG"),
    (jpeg_bytes()[:300], "truncated or corrupt"),
    (jpeg_bytes()[: len(jpeg_bytes()) // 2], "JPEG data is truncated"),
    (png_bytes()[:120], "truncated or corrupt"),
    (png_bytes(1, 1), "at least 4 px"),
    (png_header(20000, 20000), "too many pixels"),
    (png_header(8000, 8000), "over this server's limit"),
])
def test_decode_rejects(data, needle):
    with pytest.raises(ServingError) as exc:
        decode_encoded(data, MAXPIX, MINSIDE)
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in exc.value.message and exc.value.message.startswith("image.encoded")


def test_decode_modes():
    for mode in ("L", "RGBA", "P", "RGB"):
        img = decode_encoded(png_bytes(20, 10, mode=mode), MAXPIX, MINSIDE)
        assert img.mode == "RGB" and img.size == (20, 10)


def test_decode_raw():
    img = decode_raw(bytes(range(24)) * 2, 4, 4, 3, MAXPIX, MINSIDE)
    assert img.size == (4, 4) and img.getpixel((1, 0)) == (3, 4, 5)
    for args, needle in [((bytes(32), 4, 4, 2), "channels"), ((bytes(47), 4, 4, 3), "needs 48"),
                         ((bytes(3), 1, 1, 3), "at least"), ((b"", 0, 0, 3), "positive")]:
        with pytest.raises(ServingError, match=needle):
            decode_raw(*args, MAXPIX, MINSIDE)


def test_raw_blocks_are_copied_with_the_pixels_pil_gives():
    """A raw request whose box is an input-sized block of whole pixels skips PIL: same pixels, for
    grey, RGB and RGBA, whole image or a block inside; other boxes resample as before."""
    rng = np.random.default_rng(0)
    for channels, mode in ((1, "L"), (3, "RGB"), (4, "RGBA")):
        data = rng.integers(0, 256, (40, 48, channels), dtype=np.uint8)
        expected_image = Image.fromarray(data[..., 0] if channels == 1 else data, mode).convert("RGB")
        for box in [None, (16.0, 8.0, 48.0, 40.0), (5.0, 3.0, 37.0, 35.0), (3.3, 5.1, 30.7, 33.9), (0, 0, 48, 48)]:
            request = pb.DetectRequest(category="c", image=pb.Image(raw=pb.RawImage(
                pixels=data.tobytes(), height=40, width=48, channels=channels)))
            if box is not None:
                request.box.CopyFrom(pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
            size = 32 if box is not None and box[2] - box[0] == 32 else 48
            pixels, square = decode_crop(DetectQuery.from_proto(request), size, MAXPIX, MINSIDE)
            assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3) and pixels.flags.c_contiguous
            np.testing.assert_array_equal(pixels, crop_square(expected_image, square, size))
        # the whole-image block: the client's own bytes
        request = pb.DetectRequest(category="c", image=pb.Image(raw=pb.RawImage(
            pixels=data[:40, :40].tobytes(), height=40, width=40, channels=channels)))
        pixels, _ = decode_crop(DetectQuery.from_proto(request), 40, MAXPIX, MINSIDE)
        np.testing.assert_array_equal(pixels[..., 0], data[:40, :40, 0])


def test_box_validation_and_square():
    assert resolve_box(None, 40, 20) == (0.0, -10.0, 40.0, 30.0)
    assert resolve_box((10, 10, 20, 30), 40, 40) == (5.0, 10.0, 25.0, 30.0)
    for box in [(5, 5, 5, 9), (50, 50, 60, 60), (0, 0, float("nan"), 3), (-1000, -1000, 1000, 1000)]:
        with pytest.raises(ServingError) as exc:
            resolve_box(box, 40, 40)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT and exc.value.message.startswith("box")


def test_crop_square_matches_geometry_and_bounds_memory():
    image = Image.open(io.BytesIO(png_bytes(48, 40)))

    def scaled(pixels):  # what the backend feeds the model
        return pixels_to_images(torch.from_numpy(pixels)[None])[0]

    box = resolve_box(None, 48, 40)
    pixels = crop_square(image, box, 32)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    assert torch.equal(scaled(pixels), crop_to_tensor(image, box, 32))
    box = resolve_box((3.3, 5.1, 30.7, 33.9), 48, 40)  # fractional offset: PIL rounds to 8 bits differently
    assert torch.allclose(scaled(crop_square(image, box, 32)), crop_to_tensor(image, box, 32), atol=1.01 / 255)
    # a block of whole pixels of the input size is only copied, with the same pixels as resizing it
    for box in [(0.0, 0.0, 32.0, 32.0), (16.0, 8.0, 48.0, 40.0), (5.0, 3.0, 37.0, 35.0)]:
        assert torch.equal(scaled(crop_square(image, box, 32)), crop_to_tensor(image, box, 32))
    # a large image is reduced first: a uniform image stays uniform, shape is right
    big = Image.new("RGB", (1000, 700), (200, 100, 50))
    out = scaled(crop_square(big, resolve_box(None, 1000, 700), 32))
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[:, 16, 16], torch.tensor([200, 100, 50]) / 255, atol=1e-2)
    assert out[:, 0, 16].abs().max() == 0  # padding above the image is black


def test_crops_batch_as_pixels_and_scale_to_channels_last_images():
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8, generator=gen) for _ in range(3)]
    pixels = torch.stack(crops)
    assert pixels.shape == (3, 16, 16, 3) and pixels.dtype == torch.uint8
    images = pixels_to_images(pixels)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    for crop, image in zip(crops, images):
        assert torch.equal(image, crop.permute(2, 0, 1).float() / 255)


def test_point_round_trip():
    pts = torch.tensor([[3.0, 4.0], [17.25, 30.5]], dtype=torch.float64)
    box = (-2.0, 1.0, 46.0, 49.0)
    assert torch.allclose(input_to_original(original_to_input(pts, box, 32), box, 32), pts)


def test_names():
    for good in ("cats", "faces_2", "a-b", "0"):
        assert validate_category(good) == good
    for bad in ("../x", "Cats", "", "-x", "a" * 65, "a/b", "core", "x.y"):
        with pytest.raises(ServingError) as exc:
            validate_category(bad)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert validate_version("v1.2-rc_3") == "v1.2-rc_3"
    for bad in ("../v", ".hidden", "", "a/b", "x.safetensors"):
        with pytest.raises(ServingError):
            validate_version(bad)
    with pytest.raises(ServingError, match="reserved"):
        validate_version("shipped", allow_shipped=False)


# --------------------------------------------------------------------------------- cache
def test_cache_lru_in_bytes_and_counters():
    cache = ModelCache(100)
    builds = []

    def builder(key, nbytes=40):
        return lambda: (builds.append(key) or f"model-{key}", nbytes)

    for key in ("a", "b"):
        with cache.lease(key, builder(key)) as value:
            assert value == f"model-{key}"
    with cache.lease("a", builder("a")):  # hit, now b is least recent
        pass
    with cache.lease("c", builder("c")):  # evicts b
        pass
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions, s.entries, s.resident_bytes) == (1, 3, 1, 2, 80)
    assert "b" not in cache and "a" in cache and builds == ["a", "b", "c"]


def test_cache_never_evicts_leased_entries():
    cache = ModelCache(100)
    with cache.lease("a", lambda: ("A", 60)):
        with pytest.raises(CacheFullError), cache.lease("b", lambda: ("B", 60)):
            pass
        assert "a" in cache
    with cache.lease("b", lambda: ("B", 60)) as value:  # now a can go
        assert value == "B"
    assert "a" not in cache and cache.stats().evictions == 1


def test_cache_discard_waits_for_last_lease():
    cache = ModelCache(100)
    with cache.lease("a", lambda: ("A", 10)) as value:
        cache.discard("a")
        assert value == "A" and cache.stats().resident_bytes == 10
    assert cache.stats().resident_bytes == 0 and cache.stats().entries == 0


def test_cache_concurrent_misses_build_once():
    cache = ModelCache(100)
    calls = []
    gate = threading.Event()

    def build():
        calls.append(1)
        gate.wait(5)
        return "A", 10

    results = []

    def worker():
        with cache.lease("a", build) as v:
            results.append(v)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert results == ["A"] * 6 and len(calls) == 1


def test_points_map_back_to_the_clients_pixels_like_the_training_library():
    from landmarks.geometry import input_to_original
    from landmarks.heatmaps import expected_location, heatmap_to_input, locate, spatial_softmax
    from landmarks.images import locate_in_boxes as _locate_in_boxes

    heatmaps = torch.randn(3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    boxes = [(0.0, 0.0, 64.0, 64.0), (-10.5, 3.25, 190.0, 203.75), (7.0, 9.0, 9.5, 11.5)]
    points, confidence = locate(heatmaps, 64)
    probs = spatial_softmax(heatmaps)
    torch.testing.assert_close(points, heatmap_to_input(expected_location(probs), 4.0))
    torch.testing.assert_close(confidence, probs.reshape(3, 5, -1).amax(-1))
    got, got_confidence = _locate_in_boxes(heatmaps, torch.tensor(boxes, dtype=torch.float64), 64)
    assert got.dtype == got_confidence.dtype == torch.float32
    torch.testing.assert_close(got_confidence, confidence)
    for i, box in enumerate(boxes):
        torch.testing.assert_close(got[i], input_to_original(points[i].double(), box, 64).float())


def _blob_jpeg(width: int, height: int, centre: tuple[float, float], sigma: float, grey: bool = False) -> bytes:
    """A bright Gaussian blob on a dark gradient, saved as a JPEG (4:2:0, as cameras save)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))
    base = 40 * x / width + 20 * y / height
    rgb = np.stack([base + 200 * blob, base + 150 * blob, base + 100 * blob], -1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0] if grey else rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _request(data: bytes, box=None):
    from landmarks.v1 import landmarks_pb2 as pb

    request = pb.DetectRequest(category="x")
    request.image.encoded = data
    if box is not None:
        request.box.x0, request.box.y0, request.box.x1, request.box.y1 = box
    return request


@pytest.mark.parametrize("box, size, scale", [
    ((0.0, 0.0, 1600.0, 1600.0), 64, 8.0),    # 1600 // 128 = 12: the largest DCT scale, 8
    ((0.0, 0.0, 1600.0, 1600.0), 128, 4.0),   # 1600 // 256 = 6
    ((200.0, 100.0, 700.0, 600.0), 64, 2.0),  # a 500 px box: 500 // 128 = 3
    ((200.0, 100.0, 400.0, 300.0), 64, 1.0),  # a 200 px box is reduced by crop_square alone, if at all
])
def test_a_large_jpeg_is_decoded_smaller_where_the_crop_allows(box, size, scale):
    from landmarks.images import decode_scale

    data = _blob_jpeg(1600, 1200, (600.0, 400.0), 40.0)
    image = Image.open(io.BytesIO(data))
    assert decode_scale(image, box, size) == scale
    assert image.size == (-(-1600 // int(scale)), -(-1200 // int(scale)))  # libjpeg rounds up
    png = Image.open(io.BytesIO(png_bytes(1600, 1200)))  # other formats are decoded whole
    assert decode_scale(png, box, size) == 1.0 and png.size == (1600, 1200)
    loaded = decode_encoded(data, MAXPIX, MINSIDE)  # already decoded: nothing to do
    assert decode_scale(loaded, box, size) == 1.0


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("box", [None, (250.0, 50.0, 1050.0, 850.0), (-300.0, -200.0, 1100.0, 1200.0)])
def test_a_crop_from_a_smaller_decode_shows_the_same_place(box, grey):
    """What the server crops from a JPEG decoded at 1/2-1/8 scale is the crop of the whole decode, up to
    the blur of DCT scaling: the blob sits at the same place (centroid within 0.1 px of the crop) and
    the pixels differ by a few levels on average."""
    from serving.preprocess import decode_crop

    data = _blob_jpeg(1600, 1200, (600.0, 400.0), 40.0, grey)
    crop, square = decode_crop(DetectQuery.from_proto(_request(data, box)), 64, MAXPIX, MINSIDE)
    whole = decode_encoded(data, MAXPIX, MINSIDE)
    assert square == resolve_box(box, 1600, 1200)
    reference = crop_square(whole, square, 64)
    assert crop.shape == reference.shape == (64, 64, 3) and crop.dtype == np.uint8

    def centroid(pixels: np.ndarray) -> np.ndarray:
        weight = np.clip(pixels[..., 0].astype(np.float64) - 60, 0, None)
        y, x = np.mgrid[0:64, 0:64] + 0.5
        return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()

    assert np.abs(centroid(crop) - centroid(reference)).max() < 0.1
    assert np.abs(crop.astype(int) - reference).mean() < 2.0
