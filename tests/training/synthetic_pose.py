"""A tiny LSPET-format dataset written to disk (joints.mat 14 x 3 x N + images/imNNNNN.jpg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_lspet(root: Path, n: int = 8, seed: int = 0) -> Path:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    joints = np.zeros((14, 3, n))
    for i in range(n):
        w, h = 90, 120
        pts = np.stack([rng.uniform(15, w - 15, 14), rng.uniform(15, h - 15, 14)], 1)
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        for k, (x, y) in enumerate(pts):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(40 + 15 * k, 255 - 12 * k, 128))
        img.save(root / "images" / f"im{i + 1:05d}.jpg")
        joints[:, :2, i] = pts + 1  # MATLAB 1-based
        joints[:, 2, i] = 1
    joints[0, 2, 0] = 0  # one joint not annotated
    savemat(root / "joints.mat", {"joints": joints})
    return root
