"""tools/soak.py end to end: a short soak of a real `landmarks serve` on a tiny synthetic store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from landmarks.adapter_io import load_core, save_adapter, save_core
from landmarks.projection import adapter_state_dict, build_adapted
from tests.factories import make_tiny_core, randomize_adapter

ROOT = Path(__file__).resolve().parents[2]


def tiny_store(root: Path) -> Path:
    """core + faces (K=4) + cats (K=6): a few-thousand-parameter network answers in milliseconds."""
    root.mkdir()
    save_core(root / "core.safetensors", make_tiny_core(), dtype=torch.float32)
    core = load_core(root / "core.safetensors")
    for seed, (category, k) in enumerate((("faces", 4), ("cats", 6)), start=1):
        adapted = build_adapted(core.build(), k)
        randomize_adapter(adapted, seed)
        save_adapter(root / f"{category}.safetensors", adapter_state_dict(adapted), adapted.config,
                     category=category, core_sha256=core.sha256, landmark_names=[f"{category}-{i}" for i in range(k)])
    return root


def test_short_soak(tmp_path):
    store = tiny_store(tmp_path / "store")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "soak.py"), "--minutes", "0.25", "--sample-s", "2", "--clients", "2",
         "--adapters", str(store), "--out", str(out), "--churn-pause-s", "0.05", "--serve-args=--threads 1 --grace 5"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]  # 1: a timing check may fail here
    result = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 0
    assert len(result["samples"]) >= 3
    totals = result["totals"]
    assert totals["good"].get("OK", 0) > 0 and set(totals["good"]) == {"OK"}, totals
    assert set(totals.get("batch", {"OK": 1})) == {"OK"}, totals
    assert totals["bad"] and set(totals["bad"]) <= {"INVALID_ARGUMENT", "NOT_FOUND"}, totals
    assert sum(totals["admin"].values()) > 0, totals  # the churn thread ran
    checks = result["verdict"]["checks"]
    for name in ("good_requests_ok", "no_internal_unknown", "expected_codes", "clean_exit"):
        assert checks[name]["pass"], (name, checks[name], result["unexpected_examples"][:5])
    assert result["server"]["exit_code"] == 0 and result["server"]["printed_stopped"]
    # the store copy was used and removed: the repository's adapters/ is untouched
    assert not (ROOT / "adapters" / "soak-churn").exists()
