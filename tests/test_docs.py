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
# Each figure the README, RESULTS.md and the performance page quote from an evaluation or benchmark file
# is computed here from that file and must appear, in its context (its table row or sentence), in the
# page that cites it: a re-run evaluation or benchmark that changes a number fails here until the pages
# say the new one (scripts/reproduce_results.sh runs this test last). Pages are read with `**` removed
# and whitespace collapsed, so bold and line breaks do not matter.

PAGES = ("README.md", "RESULTS.md", "docs/benchmark.md", "docs/scale.md", "docs/serving/adaptations.md")
BENCH_RUNS = {  # the bench runs the performance page reads, and how many of each
    "2026-12-05-int8-128px": 6, "2026-12-05-fp32-128px": 6, "2026-12-05-default-session-threads-2-128px": 2,
    "2026-12-07-int8-128px": 1, "2026-12-07-int8-maxbatch1-128px": 1,
    "2026-12-07-ray2-int8-128px": 1, "2026-12-07-single-int8-128px": 1,
}


def _metadata(path: Path) -> dict:
    """A safetensors file's metadata, read from its JSON header (no torch needed)."""
    with path.open("rb") as f:
        return json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]


def _sources() -> dict[str, object]:
    """Every file the pages quote numbers from: docs/*_eval*.json, docs/compare/*.json, docs/bench/*.json, and
    the numbers in the shipped files' metadata (the core's validation, the int8 calibrations' checks)."""
    paths = [*ROOT.glob("docs/*_eval*.json"), *ROOT.glob("docs/compare/*.json"), *ROOT.glob("docs/bench/*.json"),
             *ROOT.glob("docs/core_probes/*.json"), *ROOT.glob("docs/jobs/*.json")]
    files: dict[str, object] = {str(p.relative_to(ROOT)): json.loads(p.read_text()) for p in sorted(paths)}
    files["adapters/core.safetensors"] = json.loads(_metadata(ROOT / "adapters/core.safetensors")["metrics"])
    for c in ("faces", "cats", "shoes"):
        calibration = json.loads(_metadata(ROOT / f"adapters/{c}.safetensors")["int8_calibration"])
        files[f"adapters/{c}.safetensors"] = calibration["check"]
    return files


def _page(page: str) -> str:
    return " ".join((ROOT / page).read_text().replace("**", "").split())


def _span(values, digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _quoted(files: dict) -> list[tuple[str, str]]:
    """(page, text it must contain), from the files' contents (`_sources()`)."""
    core, faces = files["docs/core_eval.json"], files["docs/faces_eval.json"]
    served = {f"{c}-{p}": files[f"docs/compare/served-{c}-{p}.json"]
              for c in ("faces", "cats", "shoes") for p in ("fp32", "int8")}
    compare = {(m, split): files[f"docs/compare/{m}-{split}.json"]
               for m in ("proposed", "finetune", "scratch", "faces-128-teach-500") for split in ("val", "test")}

    def fbc(d: dict) -> str:
        return f"{d['forward']:.2f} / {d['backward']:.2f} / {d['consistency']:.2f}"

    def runs(tag: str) -> list[dict]:
        found = [d for name, d in files.items() if name.startswith(f"docs/bench/{tag}-run")]
        assert len(found) == BENCH_RUNS[tag], tag
        return found

    def med(tag: str, key: str) -> float:
        return statistics.median(d[key] for d in runs(tag))

    def row(d: dict, concurrency: int, categories: int) -> dict:
        for r in d["rows"]:
            if r["concurrency"] == concurrency and r["categories"] == categories:
                return r
        raise KeyError(f"no row at concurrency {concurrency} over {categories} categories")

    int8, fp32 = "2026-12-05-int8-128px", "2026-12-05-fp32-128px"
    threads2, new = "2026-12-05-default-session-threads-2-128px", "2026-12-07-int8-128px"
    (run,) = runs(new)
    cats, shoes = served["cats-fp32"], served["shoes-fp32"]
    out = [
        # README: the headline table
        ("README.md", f"| core: held-out LSPET PCK@0.2 ({core['images']:,} images) | {core['mean_pck@0.2']:.1f}% |"),
        ("README.md", f"| {faces['forward']:.2f} / {faces['backward']:.2f} | 6.69 / 9.19 |"),
        ("README.md", (f"| {faces['consistency']:.2f} / {cats['consistency']:.2f} / {shoes['consistency']:.2f} | "
                      "2.52 / 2.44 / 2.14 |")),
        ("README.md", (f"speedup over the official forward at batch 1 / at the server's batch | "
                       f"{run['speedup_vs_official']:.2f}x / {run['speedup_vs_official_batched']:.2f}x |")),
        ("README.md", f"the same model in bare ONNX Runtime sessions over the server | {run['overhead_vs_bare_ort']:.2f} |"),
        ("README.md", (f"lone request / registration to first answer | {med(int8, 'added_ms'):.2f} ms / "
                      f"{med(int8, 'register_to_served_ms'):.0f} ms |")),
        ("README.md", f"16 categories mixed against one, crops/s | {med(int8, 'mixed_vs_single'):.2f} |"),
        # RESULTS: the core and the shipped adapters
        ("RESULTS.md", (f"| {core['mean_pck@0.2']:.1f}% ({core['images']:,} images, 9,000-9,999) | "
                        f"{files['docs/core_eval_flip.json']['mean_pck@0.2']:.1f}% | "
                        f"{files['adapters/core.safetensors']['val_pck@0.2']:.1f}% (8,500-8,999) |")),
        ("RESULTS.md", (f"| {faces['forward']:.2f} | {faces['backward']:.2f} | {faces['consistency']:.2f} | "
                       f"{faces['spread']:.1f} | - |")),
        ("RESULTS.md", (f"| - | - | {cats['consistency']:.2f} | {cats['spread']:.1f} | "
                       f"{cats['background_points_per_image']:.2f} |")),
        ("RESULTS.md", (f"| - | - | {shoes['consistency']:.2f} | {shoes['spread']:.1f} | "
                       f"{shoes['background_points_per_image']:.2f} |")),
        ("RESULTS.md", "(AFLW_M): " + ", ".join(f"{v:.1f}" for v in faces["backward_per_landmark"]) + "%"),
        ("RESULTS.md", "(`faces_eval.json`): " + ", ".join(
            f"{'all' if n == faces['train_images'] else f'{n:,}'}: {s['forward']:.1f} / {s['backward']:.1f}"
            for s in faces["subsets"] if (n := s["train_images"]) in (1, 100, 1000, faces["train_images"]))
         + " (forward / backward)"),
        ("RESULTS.md", (f"| faces: forward / backward / consistency | {fbc(served['faces-fp32'])} px | "
                       f"{fbc(served['faces-int8'])} px |")),
    ]
    for c in ("cats", "shoes"):
        fp, i8 = served[f"{c}-fp32"], served[f"{c}-int8"]
        out.append(("RESULTS.md", (f"| {c}: consistency / background points | {fp['consistency']:.2f} px / "
                                  f"{fp['background_points_per_image']:.2f} | {i8['consistency']:.2f} px / "
                                  f"{i8['background_points_per_image']:.2f} |")))
    out.append(("RESULTS.md", (f"on the same rows (`--split 8500:9000`) reads "
                              f"{files['docs/core_eval_val.json']['mean_pck@0.2']:.1f}%")))
    for c, rows in (("faces", "MTFL training rows 6655:"), ("cats", "AFHQ cats -1000:-500"),
                    ("shoes", "UT-Zappos50K -1000:-500")):
        check = files[f"adapters/{c}.safetensors"]
        out.append(("RESULTS.md", (f"| {c} | {rows} | {check['mean_px']:.3f} | {check['p95_px']:.3f} | "
                                  f"{check['max_px']:.2f} |")))
    # RESULTS: proposed / finetune / scratch, and what the text reads from them
    for m in ("proposed", "finetune", "scratch"):
        out.append(("RESULTS.md", f"| {fbc(compare[m, 'val'])} | {fbc(compare[m, 'test'])} |"))
    pro, fin, _scr = (compare[m, "test"] for m in ("proposed", "finetune", "scratch"))
    out += [
        ("RESULTS.md", (f"AFLW_M {fin['forward']:.2f} / {fin['backward']:.2f} against {pro['forward']:.2f} / "
                       f"{pro['backward']:.2f}")),
        ("RESULTS.md", f"consistency {pro['consistency']:.2f} against {fin['consistency']:.2f} px"),
        ("RESULTS.md", (f"read {fbc(compare['faces-128-teach-500', 'test'])} px on AFLW_M against the shipped "
                       f"{fbc(faces)} (validation {fbc(compare['faces-128-teach-500', 'val'])} px")),
    ]
    # docs/benchmark.md: the table of the 128 px runs, and the absolute figures from the same runs
    for tag, label in ((int8, "`--precision int8`"), (fp32, "`--precision fp32`")):
        speedups = [d["speedup_vs_official"] for d in runs(tag)]
        out.append(("docs/benchmark.md", (
            f"| {label} | {len(runs(tag))} | {med(tag, 'added_ms'):.2f} | {med(tag, 'rpc_floor_ms'):.2f} | "
            f"{med(tag, 'speedup_vs_official'):.2f} ({_span(speedups, 2)}) | {med(tag, 'register_to_served_ms'):.1f} | "
            f"{med(tag, 'mixed_vs_single'):.2f} | {med(tag, 'overhead'):.2f} |")))
        lone = [row(d, 1, 1)["p50_ms"] for d in runs(tag)]
        one, mixed = ([row(d, 16, k)["throughput"] for d in runs(tag)] for k in (1, 16))
        out.append(("docs/benchmark.md", (f"| {tag.split('-')[3]} | {_span(lone, 1)} ms | {_span(one, 0)} | "
                                         f"{_span(mixed, 0)} |")))
    rounds = [r for tag in (int8, fp32) for d in runs(tag) for r in d["headline"]["rounds"]]
    out += [
        ("docs/benchmark.md", (f"took {_span([r['official_p50_ms'] for r in rounds], 1)} ms p50 per round (median "
                              f"{statistics.median(r['official_p50_ms'] for r in rounds):.1f} ms, "
                              f"{_span([r['official_throughput'] for r in rounds], 0)} crops/s)")),
        ("docs/benchmark.md", (f"~{med(int8, 'speedup_vs_official') / med(fp32, 'speedup_vs_official'):.1f}x within "
                              f"the server: {med(int8, 'speedup_vs_official'):.2f} against "
                              f"{med(fp32, 'speedup_vs_official'):.2f}")),
        ("docs/benchmark.md", (
            f"a lone request's p50 {_span([row(d, 1, 1)['p50_ms'] for d in runs(threads2)], 1)} ms against "
            f"{_span([row(d, 1, 1)['p50_ms'] for d in runs(int8)], 1)}, and "
            f"{_span([row(d, 16, k)['throughput'] for d in runs(threads2) for k in (1, 16)], 0)} crops/s against "
            f"{_span([row(d, 16, k)['throughput'] for d in runs(int8) for k in (1, 16)], 0)}")),
    ]
    idle = [d["headline"]["after_idle"] for d in runs(fp32)]
    t = {k: statistics.median(a["server_timings_p50_ms"][k] for a in idle) for k in ("total", "compute")}
    bare = statistics.median(a["bare_p50_ms"] for a in idle)
    out += [
        ("docs/benchmark.md", (f"sees {statistics.median(a['server_p50_ms'] for a in idle) - t['total']:.2f} ms beyond "
                              "the server's own `total`")),
        ("docs/benchmark.md", f"the handler spends {t['total'] - t['compute']:.2f} ms besides the forward"),
        ("docs/benchmark.md", f"the same forward bare in the bench's process by {t['compute'] - bare:.2f} ms"),
    ]
    # docs/benchmark.md: the four baselines, one run
    h = run["headline"]
    ranges = {k: _span([r[k] for r in h["rounds"]], 2) for k in
              ("speedup_vs_official", "speedup_vs_official_batched", "overhead_vs_bare_ort", "mixed_vs_single")}
    # the server against the bare model at the batches it forms (2 or more crops per worker)
    batched = [max(v for b, v in r["bare_throughput_by_worker_batch"].items() if b != "1") / r["server_throughput"]
               for r in h["rounds"]]
    throughput = {k: statistics.median(r[k] for r in h["rounds"]) for k in
                  ("server_throughput", "official_throughput", "official_batched_throughput", "bare_throughput")}
    out += [
        ("docs/benchmark.md", (f"| `speedup_vs_official` | {run['speedup_vs_official']:.2f} | "
                              f"{ranges['speedup_vs_official']} | >= 5 |")),
        ("docs/benchmark.md", (f"| `speedup_vs_official_batched` | {run['speedup_vs_official_batched']:.2f} | "
                              f"{ranges['speedup_vs_official_batched']} | >= 3.0 |")),
        ("docs/benchmark.md", (f"| `overhead_vs_bare_ort` | {run['overhead_vs_bare_ort']:.2f} | "
                              f"{ranges['overhead_vs_bare_ort']} | <= 1.15 |")),
        ("docs/benchmark.md", f"| `added_ms` | {run['added_ms']:.2f} | - | <= 1.5 |"),
        ("docs/benchmark.md", f"| `mixed_vs_single` | {run['mixed_vs_single']:.2f} | {ranges['mixed_vs_single']} | - |"),
        ("docs/benchmark.md", (
            f"server {throughput['server_throughput']:.0f}, official at batch 1 "
            f"{throughput['official_throughput']:.0f}, official at batch {h['max_batch']} "
            f"{throughput['official_batched_throughput']:.0f}, bare ONNX Runtime "
            f"{throughput['bare_throughput']:.0f} crops/s")),
        ("docs/benchmark.md", (f"The same run's `rpc_floor_ms` was {run['rpc_floor_ms']:.2f}, `register_to_served_ms` "
                               f"{run['register_to_served_ms']:.1f} and `overhead` {run['overhead']:.2f}")),
        ("docs/benchmark.md", (f"the official forward {_span([r['official_throughput'] for r in h['rounds']], 0)} "
                              "crops/s in every round")),
        ("docs/benchmark.md", "two workers made {} crops/s at one crop per call and {}, {} and {} at 2, 4 and 8".format(
            *(f"{statistics.median(r['bare_throughput_by_worker_batch'][str(b)] for r in h['rounds']):.0f}"
              for b in (1, 2, 4, 8)))),
        ("docs/benchmark.md", f"the server is {statistics.median(batched):.2f} ({_span(batched, 2)}) below it"),
        ("docs/benchmark.md", (f"load average {run['machine']['load_before']:.2f} before and "
                              f"{run['machine']['load_after']:.2f} after")),
    ]
    (one_crop,) = runs("2026-12-07-int8-maxbatch1-128px")
    h1 = one_crop["headline"]
    out.append(("docs/benchmark.md", (
        f"served a median {statistics.median(r['server_throughput'] for r in h1['rounds']):.0f} crops/s at "
        f"concurrency 16, with `speedup_vs_official` {one_crop['speedup_vs_official']:.2f}, "
        f"`speedup_vs_official_batched` {one_crop['speedup_vs_official_batched']:.2f}, `overhead_vs_bare_ort` "
        f"{one_crop['overhead_vs_bare_ort']:.2f} and `added_ms` {one_crop['added_ms']:.2f}")))
    official = sorted(r["official_throughput"] for r in h1["rounds"])
    out.append(("docs/benchmark.md", (f"(the official forward at {official[0]:.1f} and {official[1]:.1f} crops/s against "
                                     f"{_span(official[2:], 0)} in the others)")))
    # RESULTS.md: the serving cost of each core width
    for arch in ("cpu", "w192", "paper"):
        f, i = files[f"docs/bench/frontier-{arch}.json"], files[f"docs/bench/frontier-{arch}-int8.json"]
        out.append(("RESULTS.md", (
            f"| {row(f, 1, 1)['p50_ms']:.1f} / {row(i, 1, 1)['p50_ms']:.1f} ms | "
            f"{row(f, 16, 1)['throughput']:.0f} / {row(i, 16, 1)['throughput']:.0f} | "
            f"{row(f, 16, 16)['throughput']:.0f} / {row(i, 16, 16)['throughput']:.0f} | "
            f"{f['register_to_served_ms']:.0f} / {i['register_to_served_ms']:.0f} ms |")))
        out.append(("RESULTS.md", (
            f"| `{arch}` | {i['speedup_vs_official']:.2f} | {i['added_ms']:.2f} | {i['register_to_served_ms']:.0f} ms "
            f"| {i['mixed_vs_single']:.2f} |")))
    # RESULTS.md: each width's probe, its last weights on the 500 validation rows and on 500 training rows
    def pck(name: str) -> str:
        return f"{files[name]['mean_pck@0.2']:.2f}%"

    for arch, crops in (("paper", 73_600), ("w192", 144_000), ("cpu", 219_200)):
        out.append(("RESULTS.md", (f"| {crops:,} | {pck(f'docs/core_probes/{arch}_eval_val.json')} | "
                                   f"{pck(f'docs/core_probes/{arch}_eval_train.json')} |")))
    out.append(("RESULTS.md", f"| ~370,000 | {pck('docs/core_eval_val.json')} | {pck('docs/core_eval_train.json')} |"))
    # docs/serving/adaptations.md: the real job on 300 cat photos
    job = files["docs/jobs/2026-12-07-cats300.json"]
    validation, calibration = job["job"]["validation"], job["job"]["calibration"]
    out += [("docs/serving/adaptations.md", f"consistency {validation['consistency']} px, spread {validation['spread']} px"),
            ("docs/serving/adaptations.md", f"mean {calibration['mean_px']} px, p95 {calibration['p95_px']} px")]
    for name, r in job["detect_ms_by_phase"].items():
        out.append(("docs/serving/adaptations.md",
                    f"| {name} | {r['n']:,} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} |"))
    # docs/scale.md: serve-ray with 2 replicas beside one process
    (ray,), (single,) = runs("2026-12-07-ray2-int8-128px"), runs("2026-12-07-single-int8-128px")
    for n in (1, 16):
        out.append(("docs/scale.md", (
            f"| req/s, {n} categor{'y' if n == 1 else 'ies'}, concurrency 1 / 16 | "
            f"{row(ray, 1, n)['throughput']:.1f} / {row(ray, 16, n)['throughput']:.1f} | "
            f"{row(single, 1, n)['throughput']:.1f} / {row(single, 16, n)['throughput']:.1f} |")))
    out += [
        ("docs/scale.md", (f"| p50 ms, 1 category, concurrency 1 | {row(ray, 1, 1)['p50_ms']:.2f} | "
                           f"{row(single, 1, 1)['p50_ms']:.2f} |")),
        ("docs/scale.md", f"bare forward p50, after idle) | {ray['added_ms']:.2f} | {single['added_ms']:.2f} |"),
        ("docs/scale.md", f"by the front itself) | {ray['rpc_floor_ms']:.2f} | {single['rpc_floor_ms']:.2f} |"),
        ("docs/scale.md", (f"| register_to_served_ms (p50 of 16) | {ray['register_to_served_ms']:.1f} | "
                           f"{single['register_to_served_ms']:.1f} |")),
        ("docs/scale.md", f"(the empty RPC: {ray['rpc_floor_ms']:.2f} against {single['rpc_floor_ms']:.2f} ms)"),
    ]
    return out


def test_quoted_numbers_match_their_files() -> None:
    pages = {page: _page(page) for page in PAGES}
    missing = [f"{page}: {text!r}" for page, text in _quoted(_sources()) if text not in pages[page]]
    assert not missing, "numbers the pages should quote from their files:\n" + "\n".join(missing)


def test_the_comparisons_the_results_page_states_hold() -> None:
    """RESULTS.md's sentences about proposed, finetune and scratch, checked against their files."""
    files = _sources()
    pro, fin, scr = (files[f"docs/compare/{m}-test.json"] for m in ("proposed", "finetune", "scratch"))
    keys = ("forward", "backward", "consistency")
    assert all(pro[k] < scr[k] for k in keys)  # "Proposed beats scratch on every number"
    assert all(files[f"docs/compare/proposed-{s}.json"][k] < files[f"docs/compare/scratch-{s}.json"][k]
               for s in ("val", "test") for k in keys)
    assert fin["forward"] < pro["forward"] and fin["backward"] < pro["backward"]  # "finetune is ahead on error"
    assert pro["consistency"] < fin["consistency"]  # "the proposed adapter's points are the more stable"
    page = _page("RESULTS.md")
    assert "Proposed beats scratch on every number" in page and "finetune is ahead on forward and backward" in page


def _numbers(node, path=()):
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, (*path, i))


def _changed(node, path: tuple):
    """A copy of `node` with the number at `path` moved far enough to change every rounding the pages use."""
    if not path:
        return node * 1.37 + 0.113
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _changed(node[path[0]], path[1:])
    return copy


def test_a_changed_file_fails_the_quoted_numbers() -> None:
    """Every file the check reads is quoted, and changing any number it quotes leaves a text the pages do
    not contain (a quote that also matched elsewhere on its page would not notice the change)."""
    files = _sources()
    pages = {page: _page(page) for page in PAGES}
    before = set(_quoted(files))
    assert all(text in pages[page] for page, text in before)
    quoted_files, unnoticed = set(), []
    for name, data in files.items():
        for path in _numbers(data):
            try:
                after = set(_quoted({**files, name: _changed(data, path)}))
            except (KeyError, AssertionError):  # a row's key changed: the check fails loudly
                quoted_files.add(name)
                continue
            if after == before:
                continue
            quoted_files.add(name)
            if all(text in pages[page] for page, text in after - before):
                unnoticed.append(f"{name}: {'/'.join(map(str, path))}")
    assert not unnoticed, "a change to these numbers would pass unnoticed:\n" + "\n".join(unnoticed)
    assert quoted_files == set(files), f"files no page quotes (cite them, or delete them): {set(files) - quoted_files}"


def test_reproduce_results_regenerates_every_evaluation_file() -> None:
    """scripts/reproduce_results.sh --dry-run: every `landmarks` command it would run parses, and between
    them they write every evaluation file the pages quote (the bench runs come from bench_runs.sh)."""
    import shlex

    from landmarks.cli import build_parser

    script = ROOT / "scripts/reproduce_results.sh"
    result = subprocess.run(["bash", str(script), "--dry-run", "calibrate", "core", "faces", "served", "compare"],
                            check=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LANDMARKS": "landmarks", "PYTHON": sys.executable})
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    written = {words[2] for words in commands if words[0] == "cp"}
    ran = [words[1:] for words in commands if words[0] == "landmarks"]
    assert {argv[0] for argv in ran} == {"calibrate", "evaluate-core", "evaluate", "adapt"}
    for argv in ran:
        args, unknown = build_parser(argv[0]).parse_known_args(argv)
        assert not unknown and not getattr(args, "_unavailable", None), argv
    # (docs/bench, docs/core_probes and docs/jobs come from their own commands: the bench, the probes, a job run)
    evaluations = {name for name in _sources() if name.startswith("docs/")
                   and not name.startswith(("docs/bench/", "docs/core_probes/", "docs/jobs/"))}
    kept = {"docs/compare/faces-128-teach-500-val.json", "docs/compare/faces-128-teach-500-test.json"}
    assert evaluations - kept <= written, f"not regenerated: {evaluations - kept - written}"
    # by default only the shipped files' evaluations (hours, not the comparison's training)
    default = subprocess.run(["bash", str(script), "--dry-run"], check=True, cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout
    assert " adapt " not in default and " calibrate " not in default and "docs/core_eval.json" in default
