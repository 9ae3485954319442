"""The committed generated code says what scripts/gen_protos.sh makes of the .proto."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import tomllib
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("landmarks_pb2.py", "landmarks_pb2.pyi", "landmarks_pb2_grpc.py")


def _stubs(grpc_module: str) -> set[tuple[str, str]]:
    """(RPC path, streaming kind) of every method a generated *_pb2_grpc.py declares."""
    return set(re.findall(r"\.(unary_unary|unary_stream|stream_unary|stream_stream)\(\s*'(/[\w.]+/\w+)'",
                          grpc_module))


def _typed_names(pyi: str) -> set[str]:
    """Qualified names of the classes and annotated fields a generated *_pb2.pyi declares."""
    names = set()

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                names.add(prefix + node.name)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(prefix + node.target.id)

    visit(ast.parse(pyi).body, "")
    return names


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc's descriptor sets spell out each field's default json_name; the generated module omits them."""
    def strip(messages):
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(file.message_type)
    return file


def test_generated_code_matches_the_proto(tmp_path):
    """What the generated code means, not how a grpcio-tools release spells it: the same file
    descriptor (every message, field, enum, service and option), the same RPC paths and streaming
    kinds, the same typed names. A newer grpcio-tools than the locked one passes; an edit to the
    .proto without scripts/gen_protos.sh fails."""
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
                    f"--descriptor_set_out={tmp_path / 'set.pb'}", "landmarks/v1/landmarks.proto"], check=True)
    from landmarks.v1 import landmarks_pb2 as pb

    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    fresh, committed = _without_json_names(fresh), _without_json_names(committed)
    stale = "is stale: run scripts/gen_protos.sh and commit"
    assert fresh == committed, f"landmarks/v1/landmarks_pb2.py {stale}"
    generated, ours = tmp_path / "landmarks" / "v1", ROOT / "landmarks" / "v1"
    fresh_stubs = _stubs((generated / "landmarks_pb2_grpc.py").read_text())
    assert fresh_stubs and fresh_stubs == _stubs((ours / "landmarks_pb2_grpc.py").read_text()), \
        f"landmarks/v1/landmarks_pb2_grpc.py {stale}"
    assert _typed_names((generated / "landmarks_pb2.pyi").read_text()) == \
        _typed_names((ours / "landmarks_pb2.pyi").read_text()), f"landmarks/v1/landmarks_pb2.pyi {stale}"


def _floor(requirement: str) -> tuple[int, ...]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in project if re.match(rf"{re.escape(requirement)}\s*>=", d))
    return tuple(int(p) for p in spec.split(">=")[1].split(",")[0].strip().split("."))


def test_dependency_floors_admit_the_generated_code():
    """The generated modules refuse to import under an older grpcio / protobuf than the tools that
    wrote them: pyproject.toml's floors must not promise a user those older releases."""
    grpc_text = (ROOT / "landmarks" / "v1" / "landmarks_pb2_grpc.py").read_text()
    grpc_needs = tuple(int(p) for p in re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_text)[1].split("."))
    pb_text = (ROOT / "landmarks" / "v1" / "landmarks_pb2.py").read_text()
    pb_needs = tuple(int(v) for v in re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        pb_text).groups())
    assert _floor("grpcio") >= grpc_needs, f"pyproject.toml: grpcio>= must be at least {grpc_needs}"
    assert _floor("protobuf") >= pb_needs, f"pyproject.toml: protobuf>= must be at least {pb_needs}"


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
