"""The Node.js client of docs/clients.md (@grpc/grpc-js + @grpc/proto-loader, written from the .proto) against a
real server: Detect, DetectBatch, health, a register/detect/unregister round trip, ServerInfo, and the
structured error details (a bad DetectBatch item's index and field). Needs node and `npm ci` in tests/node
(.ci/run does it); skipped, saying which, where either is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.serving.helpers import png_bytes

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"


def test_node_client(server, artifacts, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the Node.js client test needs Node.js 18 or newer)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("tests/node has no node_modules: run `npm ci` in tests/node (.ci/run does)")
    image = tmp_path / "image.png"
    image.write_bytes(png_bytes(48, 40))
    done = subprocess.run([node, str(NODE_DIR / "client.mjs"), f"127.0.0.1:{server.port}",
                           str(ROOT / "protos" / "landmarks" / "v1" / "landmarks.proto"), str(image),
                           str(artifacts.extra["birds-v1"])], cwd=NODE_DIR, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 7, done.stdout
