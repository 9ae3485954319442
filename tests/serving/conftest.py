"""Fixtures: tiny core + adapters on disk, and an in-process server on a real socket (port 0).
The builders and helpers they use, which tests import too, are in helpers.py."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from landmarks.client import LandmarkClient
from tests.serving.helpers import make_adapter, make_core, start_server

torch.set_num_threads(1)  # the tiny models need no more; the machine may be busy


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


@pytest.fixture
def server(store):
    handle = start_server(store, allowed_register_dirs=(store.parent / "allowed",))
    yield handle
    handle.shutdown(grace=0)


@pytest.fixture
def client(server):
    with LandmarkClient(f"127.0.0.1:{server.port}", timeout=20) as c:
        yield c
