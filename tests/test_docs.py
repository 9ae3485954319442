"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing page or an API
reference that no longer resolves fails the build (mkdocs.yml; the `docs` extra installs mkdocs)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing() -> list[str]:
    out = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(name)
    return out


@pytest.mark.skipif(bool(_missing()), reason=f"the docs extra is not installed (missing: {', '.join(_missing())}); "
                                              "pip install -e '.[docs]'")
def test_site_builds_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    site = tmp_path / "site"
    for page in ("index.html", "benchmark/index.html", "results/index.html", "reference/detector/index.html"):
        assert (site / page).is_file(), page
    # the API reference was generated from the docstrings, not left empty
    assert 'id="landmarks.detector.Detector.load"' in (site / "reference/detector/index.html").read_text()


# ------------------------------------------------------------------ the numbers the pages quote
# Each figure below is read from the file that holds the measurement and must appear, as quoted, in the
# page that cites it: a re-run evaluation or benchmark that changes a number fails here until the pages
# say the new one.

def _json(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _median_of(pattern: str, key: str) -> float:
    values = [json.loads(p.read_text())[key] for p in sorted((ROOT / "docs/bench").glob(pattern))]
    assert values, pattern
    return statistics.median(values)


def _quoted() -> list[tuple[str, str]]:
    """(page, text it must contain)."""
    faces = _json("docs/faces_eval.json")
    core = _json("docs/core_eval.json")
    served = {f"{c}-{p}": _json(f"docs/compare/served-{c}-{p}.json")
              for c in ("faces", "cats", "shoes") for p in ("fp32", "int8")}
    compare = {m: _json(f"docs/compare/{m}-test.json") for m in ("proposed", "finetune", "scratch")}
    default = "2026-12-05-default-128px-run*.json"
    out = [
        ("README.md", f"{core['mean_pck@0.2']:.1f}%"),
        ("README.md", f"{faces['forward']:.2f} / {faces['backward']:.2f}"),
        ("README.md", (f"{faces['consistency']:.2f} / {served['cats-fp32']['consistency']:.2f} / "
                       f"{served['shoes-fp32']['consistency']:.2f}")),
        ("README.md", f"{_median_of(default, 'speedup_vs_official'):.2f}x"),
        ("README.md", (f"{_median_of(default, 'added_ms'):.2f} ms / "
                       f"{_median_of(default, 'register_to_served_ms'):.0f} ms")),
        ("README.md", f"| {_median_of(default, 'mixed_vs_single'):.2f} |"),
        ("RESULTS.md", f"**{core['mean_pck@0.2']:.1f}%**"),
        ("RESULTS.md", f"**{faces['forward']:.2f}** | **{faces['backward']:.2f}** | **{faces['consistency']:.2f}**"),
        ("RESULTS.md", f"**{served['cats-fp32']['consistency']:.2f}**"),
        ("RESULTS.md", f"**{served['shoes-fp32']['consistency']:.2f}**"),
    ]
    for c in ("faces", "cats", "shoes"):
        for p in ("fp32", "int8"):
            out.append(("RESULTS.md", f"{served[f'{c}-{p}']['consistency']:.2f} px"))
    for name in ("faces-fp32", "faces-int8"):
        d = served[name]
        out.append(("RESULTS.md", f"{d['forward']:.2f} / {d['backward']:.2f} / {d['consistency']:.2f} px"))
    for d in compare.values():
        out.append(("RESULTS.md", f"{d['forward']:.2f} / {d['backward']:.2f}"))
        out.append(("RESULTS.md", f"{d['consistency']:.2f}"))
    for tag, runs in (("default", 5), ("int8", 6), ("fp32", 6)):
        pattern = f"2026-12-05-{tag}-128px-run*.json"
        assert len(list((ROOT / "docs/bench").glob(pattern))) == runs, pattern
        for key, digits in (("added_ms", 2), ("rpc_floor_ms", 2), ("speedup_vs_official", 2),
                            ("register_to_served_ms", 1), ("mixed_vs_single", 2), ("overhead", 2)):
            out.append(("docs/benchmark.md", f"{_median_of(pattern, key):.{digits}f}"))
    return out


def test_quoted_numbers_match_their_files() -> None:
    pages = {page: (ROOT / page).read_text() for page in ("README.md", "RESULTS.md", "docs/benchmark.md")}
    missing = [f"{page}: {text!r}" for page, text in _quoted() if text not in pages[page]]
    assert not missing, "numbers the pages should quote from their files:\n" + "\n".join(missing)
