"""Builders and helpers for the serving tests (fixtures are in conftest.py): tiny core and adapter
files, an in-process or subprocess server, test images, metrics scraping, and the batching gate."""

from __future__ import annotations

import dataclasses
import io
import shutil
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from landmarks.adapter_io import load_adapter, load_core, save_adapter, save_core
from landmarks.client import LandmarkClient
from landmarks.projection import adapter_state_dict, build_adapted
from tests.factories import make_tiny_core, randomize_adapter

CORE_K = 5


def make_core(path: Path, seed: int = 0) -> str:
    """A tiny K=CORE_K core file; returns its fingerprint."""
    return save_core(path, make_tiny_core(CORE_K, seed), dtype=torch.float32)


def adapter_tensors(core_path: Path, k: int, seed: int) -> tuple[dict[str, torch.Tensor], object]:
    adapted = build_adapted(load_core(core_path).build(), k)
    randomize_adapter(adapted, seed)
    return adapter_state_dict(adapted), adapted.config


def make_adapter(path: Path, core_path: Path, category: str, k: int = 4, seed: int = 1,
                 core_sha256: str | None = None) -> Path:
    tensors, config = adapter_tensors(core_path, k, seed)
    sha = core_sha256 or load_core(core_path).sha256
    names = [f"{category}-{i}" for i in range(k)]
    return save_adapter(path, tensors, config, category=category, core_sha256=sha, landmark_names=names)


PASSED_CHECK = {"mean_px": 0.1, "p95_px": 0.2, "max_px": 0.4, "images": 4}


def calibrate_for_int8(path: Path, core_path: Path, check: dict | None = PASSED_CHECK) -> Path:
    """Give an adapter file the int8 calibration `landmarks calibrate` would, in place: ranges of noise
    images here, and `check` recorded as the accuracy check (by default one that passed the rule, as
    `landmarks calibrate` records; None: none, as `landmarks.int8.measure` alone leaves it)."""
    from landmarks.adapter_io import save_with_metadata
    from landmarks.int8 import CALIBRATION_KEY, measure
    from landmarks.projection import fold

    core = load_core(core_path)
    adapter = load_adapter(path, core)
    model = fold(core.build(), adapter.tensors, adapter.config)
    size = adapter.config.input_size
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    calibration = measure(model, images)
    if check is not None:
        calibration = dataclasses.replace(calibration, check=dict(check))
    return save_with_metadata(path, adapter, **{CALIBRATION_KEY: calibration.to_json()})


def start_server(adapters_dir: Path, **overrides):
    from serving.config import ServerConfig
    from serving.server import build_server

    cfg = ServerConfig(host="127.0.0.1", port=0, adapters_dir=adapters_dir, max_workers=16, torch_threads=1, **overrides)
    handle = build_server(cfg)
    handle.start()
    return handle


def self_signed_cert(directory: Path) -> Path:
    """A certificate for localhost / 127.0.0.1 and its key (cert.pem, key.pem) in `directory`; skips the
    test when openssl is missing."""
    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return directory


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, mode: str = "RGB") -> bytes:
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def spawn_server(args: list[str], script: str | None = None, timeout: float = 60.0):
    """`landmarks serve ARGS` (or `python -c SCRIPT ARGS`) in a subprocess; returns
    (process, port, metrics_port or None) once it prints its listening line."""
    import os
    import re
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    script = script or "import sys; from landmarks.cli import main; sys.exit(main(['serve'] + sys.argv[1:]))"
    cmd = [sys.executable, "-c", script]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(cmd + ["--port", "0", "--threads", "1", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on \S+:(\d+) .*?(?:metrics on \S+:(\d+))?\)", line)
        if m:
            return proc, int(m.group(1)), int(m.group(2)) if m.group(2) else None
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read()[-3000:]}")


def scrape(metrics_port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv) if rest else {}
        if {k: v.strip('"') for k, v in got.items()} == labels:
            return float(value)
    return None


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose IHDR claims width x height (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(10000), 9))
            + _chunk(b"IEND", b""))


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Gate:
    """Wraps the engine's run_group: records every call; the first call waits for `open()`."""

    def __init__(self, handle) -> None:
        self.engine = handle.services.engine
        self.batcher = handle.services.batcher
        self.calls: list[tuple[str, list[str]]] = []
        self._event = threading.Event()
        self._inside = threading.Event()
        real = self.engine.run_group

        def run_group(items):
            self.calls.append((items[0].entry.category, [it.entry.category for it in items]))
            if len(self.calls) == 1:
                self._inside.set()
                self._event.wait(60)
            return real(items)

        self.engine.run_group = run_group

    def plug(self, client: LandmarkClient, pool: ThreadPoolExecutor, category: str = "cats"):
        fut = pool.submit(client.detect, png_bytes(40, 40, seed=99), category)
        assert self._inside.wait(30), "plug request never reached the model"
        return fut

    def open(self) -> None:
        self._event.set()
