"""The committed generated code is what scripts/gen_protos.sh produces from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("landmarks_pb2.py", "landmarks_pb2.pyi", "landmarks_pb2_grpc.py")


def test_generated_code_is_current(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env,
                   capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / "landmarks" / "v1" / name).read_bytes()
        committed = (ROOT / "landmarks" / "v1" / name).read_bytes()
        assert fresh == committed, f"landmarks/v1/{name} is stale: run scripts/gen_protos.sh and commit"


def test_services_and_import_path():
    from landmarks.v1 import landmarks_pb2 as pb

    services = {s.full_name for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {"landmarks.v1.LandmarkService", "landmarks.v1.AdminService"}
    assert pb.DESCRIPTOR.name == "landmarks/v1/landmarks.proto"


def test_serving_never_imports_training():
    code = ("import sys, serving.server, landmarks.client, serving.commands.serve, landmarks.commands.detect; "
            "bad = [m for m in sys.modules if m == 'training' or m.startswith('training.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
