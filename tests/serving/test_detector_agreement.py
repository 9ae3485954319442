"""The in-process API (`landmarks.Detector`) gives the server's numbers, at the same precision (by default
both `auto`: int8 for a calibrated adapter where the CPU runs int8 natively): the same points within 1e-3 px,
the same confidences and names, for every kind of image a client sends (encoded, raw, PIL), with and
without a box, large images included (the crop's reduction path, a JPEG decoded smaller); on tiny adapters and on the
shipped ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmarks import Detector, Landmarks
from landmarks.client import LandmarkClient
from tests.serving.helpers import jpeg_bytes, png_bytes, start_server

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_PX = 1e-3


def _cases():
    rng = np.random.default_rng(0)
    large = rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)  # > 2x the input: crop_square reduces first
    return [
        ("png", png_bytes(48, 40), None),
        ("jpeg", jpeg_bytes(64, 48), None),
        ("jpeg with a box", jpeg_bytes(64, 48, seed=3), (5.0, 7.5, 40.0, 30.0)),
        ("box past the edge", png_bytes(50, 50, seed=4), (-10.0, 20.0, 45.0, 70.0)),
        ("raw rgb", rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), None),
        ("raw rgba", rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), None),
        ("raw grey", rng.integers(0, 256, (33, 44), dtype=np.uint8), None),
        ("pil grey", Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)), (2.0, 2.0, 30.0, 38.0)),
        ("large", large, None),
        ("large with a box", large, (100.0, 50.0, 900.0, 650.0)),
        ("large jpeg (decoded at 1/8)", jpeg_bytes(1000, 700, seed=5), None),
        ("large jpeg with a box (decoded at 1/2)", jpeg_bytes(1000, 700, seed=6), (100.0, 50.0, 260.0, 230.0)),
    ]


def assert_agree(local: Landmarks, remote) -> None:
    served = np.array([(x, y) for x, y, _ in remote.points])
    assert local.points.shape == served.shape
    assert np.abs(local.points - served).max() <= TOLERANCE_PX, np.abs(local.points - served).max()
    assert np.allclose(local.confidences, [c for _, _, c in remote.points], atol=1e-5)
    assert local.names == remote.names
    assert np.allclose(local.box, remote.box)


@pytest.mark.parametrize("category", ["cats", "faces"])
def test_detector_agrees_with_the_server(client, store, category):
    detector = Detector.load(category, adapters=store)
    cases = _cases()
    for label, image, box in cases:
        local = detector.detect(image, box=box)
        remote = client.detect(image, category, box=box)
        try:
            assert_agree(local, remote)
        except AssertionError as exc:
            raise AssertionError(f"{category}, {label}: {exc}") from None
    # a list in, a list out, each the same as alone (several crops in one forward pass)
    batch = detector.detect([image for _, image, _ in cases], box=[box for _, _, box in cases])
    for (label, image, box), local in zip(cases, batch):
        np.testing.assert_allclose(local.points, detector.detect(image, box=box).points, atol=TOLERANCE_PX,
                                   err_msg=label)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_detector_agrees_with_the_server_on_the_shipped_adapters(tmp_path, precision):
    """The Detector and the server at the same precision agree to 1e-3 px: by default (auto) both run the
    shipped faces adapter, which carries an int8 calibration, in int8 where the CPU runs it natively. An
    fp32 Detector against the default server stays within the calibration's rule (0.5 px at 128, here
    in the photo's pixels)."""
    shipped = ROOT / "adapters"
    if not (shipped / "faces.safetensors").is_file():
        pytest.skip("no shipped faces adapter in adapters/")
    store = tmp_path / "adapters"
    store.mkdir()  # a copy (the server may write its store), with one category: each costs a load
    for name in ("core", "faces"):
        shutil.copy(shipped / f"{name}.safetensors", store)
    handle = start_server(store, precision=precision)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client:
            path = ROOT / "examples" / "face.jpg"
            detector = Detector.load("faces", adapters=store, **({} if precision == "auto" else {"precision": precision}))
            local = detector.detect(path)
            assert len(local) == 10 and local.names == [f"p{i}" for i in range(1, 11)]
            remote = client.detect(path, "faces")
            (faces,) = client.categories()
            assert detector.precision == faces.versions[0].precision
            assert_agree(local, remote)
            if faces.versions[0].precision == "int8":
                # 0.5 px at 128 is 0.5 * side / 128 in the photo (the crop is the whole image, squared)
                fp32 = Detector.load("faces", adapters=store, precision="fp32").detect(path)
                side = max(Image.open(path).size)
                assert np.abs(fp32.points - local.points).max() <= 1.5 * side / 128  # worst of 3,000 in the check: 1.02
                assert np.linalg.norm(fp32.points - local.points, axis=1).mean() <= 0.5 * side / 128
    finally:
        handle.shutdown(grace=0)


@pytest.mark.parametrize("state", [None, '{"active": "shipped"}', "{not json"])
def test_detector_picks_the_version_the_server_serves(tmp_path, state):
    from tests.serving.helpers import make_adapter, make_core

    store = tmp_path / "adapters"
    make_core(store / "core.safetensors")
    make_adapter(store / "mugs.safetensors", store / "core.safetensors", "mugs", k=3, seed=1)
    make_adapter(store / "mugs" / "v2.safetensors", store / "core.safetensors", "mugs", k=5, seed=2)
    os.utime(store / "mugs.safetensors", (1_700_000_000, 1_700_000_000))  # the shipped file is the older
    if state is not None:
        (store / "mugs" / "_state.json").write_text(state)
    handle = start_server(store)
    try:
        with LandmarkClient(f"127.0.0.1:{handle.port}", timeout=60) as client:
            (served,) = [c for c in client.categories() if c.name == "mugs"]
            image = png_bytes(40, 40)
            remote = client.detect(image, "mugs")
    finally:
        handle.shutdown(grace=0)
    local = Detector.load("mugs", adapters=store)
    assert local.adapter.sha256 == served.active_sha256 and remote.version == served.active_version
    assert_agree(local.detect(image), remote)
