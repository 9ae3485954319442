"""Tiny core + adapters on disk, and an in-process server on a real socket (port 0)."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from landmarks.adapter_io import load_core, save_adapter, save_core
from landmarks.hourglass import LandmarkHourglass, tiny_config
from landmarks.projection import adapter_state_dict, build_adapted

CORE_K = 5
torch.set_num_threads(1)  # the tiny models need no more; the machine may be busy


def randomise_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def make_core(path: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    core = LandmarkHourglass(tiny_config(CORE_K))
    with torch.no_grad():
        randomise_bn(core, gen)
    return save_core(path, core, dtype=torch.float32)


def adapter_tensors(core_path: Path, k: int, seed: int) -> tuple[dict[str, torch.Tensor], object]:
    gen = torch.Generator().manual_seed(seed)
    adapted = build_adapted(load_core(core_path).build(), k)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith(".proj"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        randomise_bn(adapted, gen)
        adapted.head.weight.copy_(torch.randn(adapted.head.weight.shape, generator=gen))
        adapted.head.bias.copy_(0.1 * torch.randn(adapted.head.bias.shape, generator=gen))
    return adapter_state_dict(adapted), adapted.config


def make_adapter(path: Path, core_path: Path, category: str, k: int = 4, seed: int = 1,
                 core_sha256: str | None = None) -> Path:
    tensors, config = adapter_tensors(core_path, k, seed)
    sha = core_sha256 or load_core(core_path).sha256
    names = [f"{category}-{i}" for i in range(k)]
    return save_adapter(path, tensors, config, category=category, core_sha256=sha, landmark_names=names)


@dataclass
class Artifacts:
    root: Path
    core: Path
    core_sha256: str
    shipped: dict[str, Path]   # category -> flat file
    extra: dict[str, Path]     # name -> adapter file for registration tests


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("artifacts")
    core = root / "core.safetensors"
    sha = make_core(core)
    shipped = {
        "cats": make_adapter(root / "cats.safetensors", core, "cats", k=4, seed=1),
        "faces": make_adapter(root / "faces.safetensors", core, "faces", k=6, seed=2),
    }
    extra = {
        "birds-v1": make_adapter(root / "extra" / "birds-v1.safetensors", core, "birds", k=3, seed=3),
        "birds-v2": make_adapter(root / "extra" / "birds-v2.safetensors", core, "birds", k=3, seed=4),
        "birds-k5": make_adapter(root / "extra" / "birds-k5.safetensors", core, "birds", k=5, seed=5),
    }
    return Artifacts(root, core, sha, shipped, extra)


@pytest.fixture
def store(artifacts, tmp_path) -> Path:
    """A fresh adapters directory: core + two shipped categories."""
    d = tmp_path / "adapters"
    d.mkdir()
    shutil.copy(artifacts.core, d / "core.safetensors")
    for cat, path in artifacts.shipped.items():
        shutil.copy(path, d / f"{cat}.safetensors")
    return d


def start_server(adapters_dir: Path, **overrides):
    from serving.config import ServerConfig
    from serving.server import build_server

    cfg = ServerConfig(host="127.0.0.1", port=0, adapters_dir=adapters_dir, max_workers=16, torch_threads=1, **overrides)
    handle = build_server(cfg)
    handle.start()
    return handle


@pytest.fixture
def server(store):
    handle = start_server(store, allowed_register_dirs=(store.parent / "allowed",))
    yield handle
    handle.shutdown(grace=0)


@pytest.fixture
def client(server):
    from landmarks.client import LandmarkClient

    with LandmarkClient(f"127.0.0.1:{server.port}", timeout=20) as c:
        yield c


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
