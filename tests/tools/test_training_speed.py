"""scripts/training_speed.py step: the adaptation step it times is the one `landmarks adapt` runs, so
a change to that step's signature must not leave the measurement broken."""

from __future__ import annotations

import json
import subprocess
import sys

from landmarks.adapter_io import save_core
from tests.factories import make_tiny_core
from tests.tools.test_soak import ROOT


def test_the_step_measurement_runs_a_real_adaptation_step(tmp_path):
    core = tmp_path / "core.safetensors"
    save_core(core, make_tiny_core(num_landmarks=14))  # the presets find 10 landmarks
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/training_speed.py"), "step", "--core", str(core), "--preset", "quick",
         "--variants", "fp32", "--rounds", "2", "--steps", "1", "--batch-size", "2", "--warmup", "1"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["round 1", "round 2"]
    rates = json.loads(lines[-1])
    assert rates["fp32"]["img_per_s"] > 0 and rates["fp32"]["x fp32"] == 1.0
