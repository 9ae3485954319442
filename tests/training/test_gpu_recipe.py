"""scripts/gpu_recipe.sh --dry-run: every command of the GPU recipe, on the tiny preset on the CPU,
over synthetic data laid out like ../shared/data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.training.synthetic_pose import write_lspet


def _write_data(root) -> None:
    write_lspet(root / "lspet", n=12)
    rng = np.random.default_rng(0)
    mtfl = root / "mtfl"
    (mtfl / "img").mkdir(parents=True)
    lines = []
    for i in range(14):
        Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(60, 200, 3))).save(mtfl / "img" / f"{i}.jpg")
        pts = np.array([[12, 15], [28, 15], [20, 22], [14, 30], [26, 30]], float) + rng.normal(0, 1.5, (5, 2))
        lines.append(f"img/{i}.jpg " + " ".join(f"{v:.2f}" for v in pts.T.reshape(-1)))
    (mtfl / "new_training.txt").write_text("\n".join(lines[:10]) + "\n")
    (mtfl / "new_testing.txt").write_text("\n".join(lines[10:]) + "\n")
    for category, subfolder in (("cats", ""), ("shoes", "Shoe")):
        folder = root / category / subfolder
        folder.mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (48, 36), tuple(int(v) for v in rng.integers(0, 255, 3))).save(folder / f"{i}.jpg")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_recipe_dry_run(tmp_path, request):
    root = request.config.rootpath
    _write_data(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "DATA": str(tmp_path / "data"), "LANDMARKS": f"{sys.executable} -m landmarks.cli",
           "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_recipe.sh"), str(out), "--dry-run"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in ("core/core.safetensors", "core/eval/core_eval.json", "faces/adapter.safetensors",
                 "faces/eval/evaluation.json", "cats/adapter.safetensors", "shoes/eval/evaluation.json"):
        assert (out / path).is_file(), path
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["core", "faces", "cats", "shoes"]
    assert "forward" in summary[1] and "consistency" in summary[3]
    assert "--device cpu" in done.stderr  # every command was shown as it ran
