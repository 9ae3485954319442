"""The serving install needs no torch: with torch made unimportable (an import hook that refuses it and
records every attempt), the real server on a real socket answers Detect over gRPC and over HTTP,
`landmarks detect` asks it, `Detector` gives its numbers in-process, and `landmarks export` writes a
file ONNX Runtime runs to the same points, `landmarks info` reads files; no process ever tries to
import torch. The training
commands say at once which extra they need."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from landmarks.client import LandmarkClient
from tests.serving.helpers import calibrate_for_int8, make_adapter, make_core, png_bytes

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_PX = 1e-3

# Prepended to every command: refuse torch (and torchvision) and record who asked, in $TORCH_ATTEMPTS.
_BLOCKER = """\
import os, sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            with open(os.environ["TORCH_ATTEMPTS"], "a") as fh:
                fh.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (torch is blocked here)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""
_CLI = _BLOCKER + "from landmarks.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture
def torch_free(tmp_path):
    """(run, spawn, attempts): `run(code_or_cli_args)` and `spawn(cli_args)` in interpreters without torch."""
    attempts = tmp_path / "torch_attempts.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_ATTEMPTS=str(attempts))

    def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
        script = _BLOCKER + code if code is not None else _CLI
        return subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, check=False)

    def spawn(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _CLI, *args], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return run, spawn, attempts


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "adapters"
    make_core(store / "core.safetensors")
    make_adapter(store / "mugs.safetensors", store / "core.safetensors", "mugs", k=3, seed=1)
    calibrate_for_int8(make_adapter(store / "cups.safetensors", store / "core.safetensors", "cups", k=4, seed=2),
                       store / "core.safetensors")  # served in int8 where the CPU runs it natively
    return store


def _listening(proc: subprocess.Popen) -> tuple[int, int]:
    """The gRPC and HTTP ports from the server's start line (it prints it once it serves)."""
    for line in proc.stdout:
        found = re.search(r"listening on \S+:(\d+) .*HTTP/JSON and demo page on http://\S+:(\d+)/", line)
        if found:
            return int(found.group(1)), int(found.group(2))
    raise AssertionError(f"the server did not start: {proc.stderr.read()[-3000:]}")


def _points(reply) -> np.ndarray:
    return np.array([(x, y) for x, y, _ in reply.points])


def test_the_serving_path_runs_without_torch(torch_free, store, tmp_path):
    run, spawn, attempts = torch_free
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(60, 44, seed=7))
    server = spawn("serve", "--adapters", str(store), "--port", "0", "--http-port", "0", "--threads", "1")
    try:
        port, http_port = _listening(server)
        with LandmarkClient(f"127.0.0.1:{port}", timeout=60) as client:
            served = {c: client.detect(image, c) for c in ("mugs", "cups")}
            precisions = {c.name: c.versions[0].precision for c in client.categories()}
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/detect?category=mugs",
                                         data=image.read_bytes(), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            over_http = json.loads(reply.read())
        np.testing.assert_allclose([(p["x"], p["y"]) for p in over_http["landmarks"]], _points(served["mugs"]),
                                   atol=TOLERANCE_PX)

        cli = run("detect", "--server", f"127.0.0.1:{port}", "--category", "mugs", str(image))
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["category"] == "mugs"
    finally:
        server.terminate()
        server.wait(timeout=60)

    # in-process, by default at the server's precision (int8 for the calibrated adapter where it runs natively)
    local = run(str(store), str(image), code=(
        "import json\nfrom landmarks import Detector\nout = {}\n"
        "for c in ('mugs', 'cups'):\n"
        "    d = Detector.load(c, adapters=sys.argv[1])\n"
        "    out[c] = [d.precision, d.detect(sys.argv[2]).points.tolist()]\n"
        "print(json.dumps(out))\n"))
    assert local.returncode == 0, local.stderr
    for category, (precision, points) in json.loads(local.stdout).items():
        assert precision == precisions[category]
        np.testing.assert_allclose(points, _points(served[category]), atol=TOLERANCE_PX, err_msg=category)

    info = run("info", str(store / "cups.safetensors"))
    assert info.returncode == 0 and "int8" in info.stdout, info.stderr
    exported = run("export", str(store / "mugs.safetensors"), "--out", str(tmp_path / "mugs.onnx"))
    assert exported.returncode == 0, exported.stderr
    import onnxruntime as ort
    from PIL import Image

    from landmarks.runtime.crops import crop_square, square_box

    photo = Image.open(image).convert("RGB")
    box = square_box((0.0, 0.0, *photo.size))
    session = ort.InferenceSession(str(tmp_path / "mugs.onnx"), providers=["CPUExecutionProvider"])
    size = int(session.get_modelmeta().custom_metadata_map["input_size"])
    points, _ = session.run(None, {"pixels": crop_square(photo, box, size)[None], "boxes": np.array([box])})
    np.testing.assert_allclose(points[0], _points(served["mugs"]), atol=TOLERANCE_PX)

    assert not attempts.exists(), f"something tried to import torch: {attempts.read_text()}"


@pytest.mark.parametrize("command", [
    ["adapt", "folder:photos", "--category", "mugs", "--out", "runs/mugs"],
    ["train-core", "--preset", "tiny", "--out", "runs/core"],
    ["calibrate", "x.safetensors", "--images", "folder:x"],
    ["evaluate", "--adapter", "x.safetensors", "--images", "folder:x"],
    ["bench", "--server", "127.0.0.1:1"],
])
def test_a_training_command_without_torch_names_the_extra_at_once(torch_free, tmp_path, command):
    run, _, attempts = torch_free
    out = run(*command)
    assert out.returncode == 2
    assert "pip install 'landmark-adapters[train]'" in out.stderr
    assert f"landmarks {command[0]} needs the train extra" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing was made before the check
    assert "torch" in attempts.read_text()  # it looked for torch (and found it missing) without importing it


def test_a_torch_backend_without_torch_names_the_extra(torch_free, store):
    run, _, _ = torch_free
    out = run("serve", "--adapters", str(store), "--port", "0", "--backend", "torchscript")
    assert out.returncode == 2
    assert "--backend torchscript needs torch" in out.stderr and "pip install 'landmark-adapters[train]'" in out.stderr
