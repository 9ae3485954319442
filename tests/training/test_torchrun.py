"""`torchrun --nproc_per_node 2` for both training commands on the CPU (gloo), tiny networks: one
process writes the files, and the checkpoint resumes in a single process (any world size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from landmarks.adapter_io import load_adapter, load_core
from tests.training.synthetic_pose import write_lspet

pytest.importorskip("torch.distributed.run")


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "landmarks.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    done = subprocess.run([*launcher, *args], check=False, capture_output=True, text=True, timeout=240, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1, done.stdout  # one process reports (and writes) the file
    return done


def _alone(args: list[str]) -> None:
    """The same command in this process (world size 1): the checkpoint must not care."""
    from landmarks.cli import main

    assert main(args) == 0


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture
def repo_root(request):
    return request.config.rootpath


def test_adapt_on_two_processes_then_resume_on_one(tmp_path, core_file, face_data, repo_root):
    out = tmp_path / "run"
    common = ["adapt", f"mtfl:{face_data / 'train.txt'}", "--preset", "smoke", "--core", str(core_file),
              "--category", "faces", "--num-landmarks", "4", "--device", "cpu", "--out", str(out)]
    done = _torchrun([*common, "--steps", "2"], repo_root)
    assert "2 process(es)" in done.stderr
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert [h["step"] for h in _history(out)] == [1, 2]
    assert load_adapter(out / "adapter.safetensors", load_core(core_file)).metadata["processes"] == "2"
    _alone([*common, "--steps", "3", "--resume"])
    assert [h["step"] for h in _history(out)] == [1, 2, 3]


def test_train_core_on_two_processes(tmp_path, repo_root):
    data = write_lspet(tmp_path / "lspet", n=10)
    out = tmp_path / "core"
    common = ["train-core", "--preset", "smoke", "--data", f"lspet:{data}", "--train-split", ":8",
              "--val-split", "8:", "--device", "cpu", "--out", str(out)]
    _torchrun([*common, "--steps", "2"], repo_root)
    core = load_core(out / "core.safetensors")
    assert core.metadata["training_steps"] == "2" and core.metadata["processes"] == "2"
    assert "val_pck" in _history(out)[-1]
    _alone([*common, "--steps", "3", "--resume"])
    assert [h["step"] for h in _history(out)] == [1, 2, 3]
