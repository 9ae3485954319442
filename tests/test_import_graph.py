"""Who may import whom: `landmarks` is the shared library (it imports neither side), `serving` never
imports `training`, `training` never imports `serving` (both run categories through the inference
runtime, `landmarks.runtime`, which imports no torch). Checked twice: statically over every import statement in the source (including
those inside functions, which a run only meets on some paths), and by running commands and looking
at what they loaded."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level packages of this repository it must not import
FORBIDDEN = {
    "landmarks": {"training", "serving"},
    "serving": {"training"},
    "training": {"serving"},
}


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in a file under `root`, relative ones
    resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = list(path.relative_to(root).parts[:-1])  # the package relative imports start from
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return sorted(found)


def test_the_graph_parser_sees_imports_inside_functions_and_relative_ones(tmp_path):
    probe = tmp_path / "landmarks" / "commands" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import os\ndef f():\n    from training import adapt\n    if 1:\n        import serving.x\n"
                     "    from ..training import y\n    from . import z\n")
    names = [name for _, name in imported_modules(probe, tmp_path)]
    assert names == ["os", "training", "serving.x", "landmarks.training", "landmarks.commands"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not bad, "\n".join(bad)


# Runs `landmarks ARGS` in a fresh interpreter and reports the exit code and every loaded module.
_WRAPPER = """\
import json, sys
from landmarks.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print("MODULES " + json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def run_cli(*args: str, timeout: float = 120.0) -> tuple[int, set[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("MODULES ")]
    assert lines, f"the CLI did not finish: {out.stderr[-3000:]}"
    report = json.loads(lines[-1].removeprefix("MODULES "))
    return report["rc"], set(report["modules"]), out.stderr


def loaded(modules: set[str], *tops: str) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in tops)


def test_top_level_help_imports_no_subcommand():
    rc, modules, _ = run_cli("--help")
    assert rc == 0
    assert not loaded(modules, "training", "serving", "torch", "grpc")
    assert not [m for m in modules if m.startswith("landmarks.commands")]


def test_serve_help_imports_nothing_from_training():
    rc, modules, _ = run_cli("serve", "--help")
    assert rc == 0
    assert "serving.commands.serve" in modules
    assert not loaded(modules, "training")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_detect_without_a_server_fails_cleanly_and_imports_only_the_client(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG not really")  # never decoded: no server answers
    rc, modules, err = run_cli("detect", "--server", f"127.0.0.1:{_closed_port()}", "--wait", "0",
                               "--timeout", "2", "--category", "faces", str(image), timeout=60)
    assert rc == 1
    assert "no server answers" in err
    assert "landmarks.client" in modules
    # the client needs neither side's code, nor torch
    assert not loaded(modules, "training", "serving", "torch")


def test_a_subcommand_whose_packages_are_missing_says_so(tmp_path):
    # `training` made unimportable, as in a server image without the training extra
    script = tmp_path / "run.py"
    script.write_text("import sys\nsys.modules['training'] = None\n"
                      "from landmarks.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(script), "adapt", "folder:x", "--category", "mugs"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "adapt needs more packages" in out.stderr
    assert "pip install" in out.stderr


# the runtime sits below both sides and runs without torch: it imports numpy, onnx, onnxruntime, PIL
# and its own modules, and of the rest of `landmarks` only the torch-free helpers named here
RUNTIME_MAY_IMPORT = {"landmarks.runtime", "landmarks.text", "landmarks.hardware"}


def test_the_runtime_imports_no_torch_and_nothing_above_it():
    bad = []
    for path in sorted((ROOT / "landmarks" / "runtime").rglob("*.py")):
        for line, name in imported_modules(path):
            top = name.split(".")[0]
            if top in {"torch", "torchvision", "training", "serving"} or (
                    top == "landmarks" and not any(name == m or name.startswith(m + ".") for m in RUNTIME_MAY_IMPORT)):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not bad, "\n".join(bad)
