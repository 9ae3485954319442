"""`landmarks.Detector` on tiny files: where it finds adapters, what it accepts, what it says when it
cannot. (Agreement with the server: tests/serving/test_detector_agreement.py.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landmarks import Detector, Landmarks
from tests.serving.helpers import make_adapter, make_core

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_core(root / "core.safetensors")
    make_adapter(root / "mugs.safetensors", root / "core.safetensors", "mugs", k=3, seed=1)
    make_adapter(root / "mugs" / "v2.safetensors", root / "core.safetensors", "mugs", k=5, seed=2)
    os.utime(root / "mugs.safetensors", (1_700_000_000, 1_700_000_000))  # the shipped file is the older
    return root


def test_import_landmarks_stays_light():
    code = "import sys, landmarks; print('torch' in sys.modules, 'Detector' in dir(landmarks))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.split() == ["False", "False"]  # Detector (and torch) load on first use


def test_load_and_detect_every_kind_of_image(store):
    detector = Detector.load("mugs", adapters=store, version="shipped")
    assert detector.names == ["mugs-0", "mugs-1", "mugs-2"] and "mugs" in repr(detector)
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    path = store.parent / "mug.png"
    path.write_bytes(buf.getvalue())
    results = [detector.detect(x) for x in (rgb, buf.getvalue(), path, str(path), Image.fromarray(rgb),
                                            torch.from_numpy(rgb))]
    for result in results:
        assert isinstance(result, Landmarks) and result.points.shape == (3, 2) and result.confidences.shape == (3,)
        assert result.image_size == (40, 30) and result.box == (0.0, -5.0, 40.0, 35.0)
        np.testing.assert_allclose(result.points, results[0].points, atol=1e-5)
    text = repr(results[0])
    assert "3 points in a 40x30 image" in text and "mugs-2" in text
    assert json.loads(json.dumps(results[0].to_dict()))["landmarks"][0]["name"] == "mugs-0"
    assert len(detector.detect([rgb, rgb], box=[None, (0, 0, 20, 20)])) == 2


def test_the_version_the_server_would_serve_explicit_files_and_versions(store):
    """The server's rule (landmarks.store_layout.pick_active): the state's active version, else the newest
    that loads; a shipped file unregistered on the server is not served."""
    def k(**kwargs) -> int:
        return len(Detector.load("mugs", adapters=store, **kwargs).names)

    state = store / "mugs" / "_state.json"
    assert k() == 5  # no state: the newest, v2
    try:
        state.write_text(json.dumps({"active": "shipped", "shipped_removed": None}))
        assert (k(), k(version="v2")) == (3, 5)
        state.write_text("{not json")  # a bad state file costs only the choice: the newest again
        assert k() == 5
        shipped = Detector.load("mugs", adapters=store, version="shipped").adapter.sha256
        state.write_text(json.dumps({"active": None, "shipped_removed": shipped}))
        os.utime(store / "mugs" / "v2.safetensors", (1_600_000_000, 1_600_000_000))  # now the older
        assert k() == 5  # the newer shipped file was unregistered
        with pytest.raises(FileNotFoundError, match="no version 'shipped'"):
            k(version="shipped")
    finally:
        state.unlink()
        os.utime(store / "mugs" / "v2.safetensors")
    assert k() == 5
    explicit = Detector.load(adapter=store / "mugs" / "v2.safetensors", core=store / "core.safetensors")
    assert explicit.category == "mugs" and len(explicit.names) == 5
    assert Detector.categories(store) == ["mugs"]


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    ({"category": "cats"}, FileNotFoundError, "it holds: mugs"),
    ({"category": "../core"}, ValueError, "letters, digits"),
    ({"category": "mugs", "version": "v9"}, FileNotFoundError, "no version 'v9'"),
    ({}, ValueError, "name a category"),
    ({"category": "mugs", "core": "/nonexistent/core.safetensors"}, FileNotFoundError, "no core file"),
])
def test_load_says_what_is_wrong(store, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        Detector.load(adapters=store, **kwargs)


def test_a_missing_adapters_directory_says_how_to_name_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapters=DIR"):
        Detector.load("faces", adapters=tmp_path / "nowhere")


@pytest.mark.parametrize(("image", "box", "error", "needle"), [
    (np.zeros((8, 8, 3), np.float32), None, ValueError, "must be uint8"),
    (np.zeros((8, 8, 2), np.uint8), None, ValueError, "H x W"),
    (b"not an image", None, ValueError, "not an image"),
    (12, None, TypeError, "cannot read a int"),
    (np.zeros((8, 8, 3), np.uint8), (0, 0, 0, 5), ValueError, "x1 > x0"),
    (np.zeros((8, 8, 3), np.uint8), (20, 20, 30, 30), ValueError, "outside"),
    ([np.zeros((8, 8, 3), np.uint8)], [None, None], ValueError, "2 boxes for 1 images"),
])
def test_detect_says_what_is_wrong(store, image, box, error, needle):
    with pytest.raises(error, match=needle):
        Detector.load("mugs", adapters=store).detect(image, box=box)
