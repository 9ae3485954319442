"""tools/adaptation_job.py end to end: a smoke-preset job through a real `landmarks serve` on a tiny
synthetic store, submitted with curl, with Detect measured before, during and after it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.tools.test_soak import ROOT, tiny_store


@pytest.mark.skipif(shutil.which("curl") is None, reason="the tool submits the job with curl, which is not installed")
def test_a_smoke_job_is_timed_and_served(tmp_path):
    store = tiny_store(tmp_path / "store")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):  # a dark box on a plain background, placed at random
        pixels = np.full((40, 40, 3), rng.integers(120, 220, 3), np.uint8)
        x, y = rng.integers(4, 16, 2)
        pixels[y:y + 18, x:x + 16] = rng.integers(0, 100, 3)
        Image.fromarray(pixels).save(photos / f"p{i:02d}.png")
    (photos / "notes.txt").write_text("not an image: not picked")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "adaptation_job.py"), "--images", str(photos), "--count", "12",
         "--category", "boxes", "--preset", "smoke", "--adapters", str(store), "--probe-image", str(photos / "p13.png"),
         "--rate", "20", "--baseline-s", "1", "--out", str(out), "--serve-args=--threads 1 --grace 5"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "job.json").read_text())
    assert result["job"]["state"] == "succeeded" and result["job"]["version"].startswith("job-")
    assert result["photos"] == {"folder": str(photos), "count": 12, "first": "p00.png", "last": "p11.png"}
    assert result["job"]["upload"]["images"] == 12
    assert result["served"]["active_version"] == result["job"]["version"]
    assert result["served"]["num_landmarks"] == 10 and result["served"]["precision"] in ("fp32", "int8")
    phases = result["detect_ms_by_phase"]
    assert {"before", "after"} <= set(phases) and len(phases) >= 3, phases  # and at least one of the job's
    for phase in phases.values():
        assert phase["codes"] == {"OK": phase["n"]} and phase["n"] > 0 and phase["p50"] > 0
    assert result["curl"].startswith("curl ") and "category=boxes" in result["curl"]
    assert (out / "adapter" / f"{result['job']['version']}.safetensors").is_file()  # kept after the store is gone
    for picture in ("job.png", "samples.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    # --report reads the run again; a mark at the probe's start splits every job phase, not before/after
    again = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "adaptation_job.py"), "--report", str(out),
         "--mark", f"{result['probe_started_utc']}=marked"],
        check=True, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    names = [line[:40].strip() for line in again.splitlines()[1:]]
    assert names[0] == "before" and names[-1] == "after", again
    assert all(name.endswith(", marked") for name in names[1:-1]) and len(names) == len(phases), again
    record = json.loads((out / "report.json").read_text())  # the run's record with the split latency
    assert record["job"] == result["job"] and record["marks"] == [f"{result['probe_started_utc']}=marked"]
    assert list(record["detect_ms_by_phase"]) == names
