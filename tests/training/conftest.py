"""Fixtures of the training tests: a tiny core file and synthetic MTFL-format faces."""

import numpy as np
import pytest
from PIL import Image

from landmarks.adapter_io import save_core
from tests.factories import make_tiny_core


@pytest.fixture
def face_data(tmp_path):
    """MTFL-format list files over synthetic 40x40 'faces' (two eyes, nose, mouth)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mtfl"
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(14):
        img = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(100, 200, 3)))
        pts = np.array([[12, 15], [28, 15], [20, 22], [14, 30], [26, 30]], float) + rng.normal(0, 1.5, (5, 2))
        px = img.load()
        for x, y in pts.round().astype(int):
            px[int(x), int(y)] = (0, 0, 0)
        img.save(root / "img" / f"{i}.jpg")
        lines.append(f"img/{i}.jpg " + " ".join(f"{v:.2f}" for v in pts[:, 0]) + " "
                     + " ".join(f"{v:.2f}" for v in pts[:, 1]))
    (root / "train.txt").write_text("\n".join(lines[:10]) + "\n")
    (root / "test.txt").write_text("\n".join(lines[10:]) + "\n")
    return root


@pytest.fixture
def core_file(tmp_path):
    path = tmp_path / "core.safetensors"
    save_core(path, make_tiny_core())
    return path
