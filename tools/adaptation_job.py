"""A real adaptation job through a running server, timed, with Detect latency before, during and after it.

    python tools/adaptation_job.py --images ../shared/data/cats --count 300 --category cats-job \\
        --out runs/job-cats300

What it does
  1. Copies the adapter store (`--adapters`, default the repository's adapters/) into a temporary
     directory and starts `landmarks serve` on it with the HTTP plane, the server's defaults for
     everything else (one adaptation worker, one torch thread at nice 10) plus `--serve-args`.
  2. Zips the first `--count` images of `--images` (sorted by name, so the set is reproducible).
  3. One client sends Detect on `--probe-category` with `--probe-image` at `--rate` requests/s, one
     at a time, for the whole run, and records each latency with the job's phase at that moment.
  4. After `--baseline-s` seconds it submits the job with curl, exactly as a user would
     (`curl -F category=... -F images=@photos.zip -F activate=true .../v1/adaptations`), polls
     `GET /v1/adaptations/{id}` until the job ends, then measures `--baseline-s` more seconds.
  5. Checks what a user would: the new category answers Detect with K points, and which precision its
     version runs in (int8 when its calibration passed the check).

Output in --out: job.json (machine, commands, the job's final record, wall time per phase, Detect
p50/p95/p99 per phase), samples.json (every probe Detect: seconds since the probe started at
job.json's probe_started_utc, ms, code, the job's phase), job.png (latency over time with the job's
phases and steps), samples.png (the job's samples picture), adapter/ (the category's folder in the
store: the registered version) and server.log. The exit status is 1 if
the job did not succeed.

--report OUT prints a finished run's per-phase latency again and writes OUT/report.json (job.json with
that latency and the marks: the record docs/jobs/ keeps); each
--mark UTC=LABEL splits the job's phases at that time, e.g. where other work on the machine stopped:

    python tools/adaptation_job.py --report runs/job-cats300 --mark 2026-12-07T17:35:00Z=alone
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import ROOT, machine, percentiles, start_server

from landmarks.client import LandmarkClient

UTC = "%Y-%m-%dT%H:%M:%SZ"  # the wall-clock format of probe_started_utc and --mark
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def make_zip(folder: Path, count: int, path: Path) -> list[str]:
    names = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if len(names) < count:
        raise SystemExit(f"{folder} has {len(names)} images, fewer than --count {count}")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # JPEGs do not compress
        for p in names:
            z.write(p, p.name)
    return [p.name for p in names]


class Probe(threading.Thread):
    """Detect at a steady rate, one request at a time; each sample is (t, ms, code, phase)."""

    def __init__(self, address: str, category: str, image: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.client = LandmarkClient(address)
        self.category, self.image, self.period = category, image, 1.0 / rate
        self.phase = "before"
        self.samples: list[tuple[float, float, str, str]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.started_utc = time.strftime(UTC, time.gmtime())  # the wall clock at t = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            phase, start = self.phase, time.perf_counter()
            try:
                self.client.detect(self.image, self.category)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            ms = (time.perf_counter() - start) * 1000
            self.samples.append((round(time.monotonic() - self.t0, 3), round(ms, 3), code, phase))
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        self.client.close()


def latency_by_phase(samples: list, marks: list[tuple[float, str]] = ()) -> dict:
    """p50/p95/p99 of the OK probe Detects and the codes of all, per job phase; a phase that spans a
    mark (seconds since the probe started, label) is split there into 'phase, label' parts."""
    def label(t: float, phase: str) -> str:
        before = [name for at, name in marks if t >= at]
        return f"{phase}, {before[-1]}" if before and phase not in ("before", "after") else phase

    rows: dict[str, list] = {}
    for t, ms, code, phase in samples:
        rows.setdefault(label(t, phase), []).append((ms, code))
    return {name: {**percentiles([ms for ms, code in got if code == "OK"]), "codes": dict(Counter(c for _, c in got))}
            for name, got in rows.items()}


def report(out: Path, marks: list[str]) -> int:
    """Per-phase latency of a finished run, split at wall-clock marks ('2026-12-07T17:35:00Z=label'); also
    written to OUT/report.json."""
    result = json.loads((out / "job.json").read_text())
    samples = json.loads((out / "samples.json").read_text())
    if "probe_started_utc" in result:
        start = calendar.timegm(time.strptime(result["probe_started_utc"], UTC))
    else:  # a run from before the field: the server logged the job's arrival; the probe's first job sample follows it
        logged = re.search(rf"^(\S+ \S+),\d+ INFO serving.adaptations: adaptation job {result['job']['id']}:",
                           (out / "server.log").read_text(), re.MULTILINE)
        first = next(t for t, _, _, phase in samples if phase != "before")
        start = calendar.timegm(time.strptime(logged.group(1), "%Y-%m-%d %H:%M:%S")) - first
    parsed = []
    for mark in marks:
        when, _, name = mark.partition("=")
        parsed.append((calendar.timegm(time.strptime(when, UTC)) - start, name or when))
    by_phase = latency_by_phase(samples, sorted(parsed))
    # the run's record with the split latency: what the docs keep (docs/jobs/)
    record = {**{k: v for k, v in result.items() if k != "detect_ms_by_phase"}, "detect_ms_by_phase": by_phase,
              "marks": marks}
    (out / "report.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{'phase':40s} {'n':>6s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s}  codes")
    for name, row in by_phase.items():
        print(f"{name:40s} {row['n']:6d} {row['p50'] or 0:7.2f} {row['p95'] or 0:7.2f} {row['p99'] or 0:7.2f}  {row['codes']}")
    return 0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def plot(path: Path, probe_samples: list, progress: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colors = {"before": "tab:gray", "queued": "tab:gray", "starting": "tab:olive", "training": "tab:blue",
              "calibrating": "tab:purple", "registering": "tab:red", "after": "tab:green"}
    for phase in dict.fromkeys(s[3] for s in probe_samples):
        pts = [(s[0] / 60, s[1]) for s in probe_samples if s[3] == phase and s[2] == "OK"]
        ax.scatter(*zip(*pts), s=2, color=colors.get(phase, "k"), label=phase)
    ax.set_yscale("log")
    ax.set_ylabel("Detect latency, ms (log)")
    ax.legend(markerscale=5, loc="upper right")
    ax.set_title("Detect on a served category while an adaptation job trains beside it")
    if progress:
        ax2.plot([p["t"] / 60 for p in progress], [p["step"] for p in progress], color="tab:blue")
    ax2.set_ylabel("job step")
    ax2.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, metavar="OUT",
                        help="no job: print the per-phase latency of a finished run's OUT folder again")
    parser.add_argument("--mark", action="append", default=[], metavar="UTC=LABEL",
                        help="with --report: split the job's phases at this time (e.g. when other work on the "
                             "machine stopped: 2026-12-07T17:35:00Z=alone); repeatable")
    parser.add_argument("--images", type=Path, help="a folder of photos of the new category")
    parser.add_argument("--count", type=int, default=300, help="how many (the first, sorted by name)")
    parser.add_argument("--category", default="cats-job", help="the new category's name")
    parser.add_argument("--preset", default="", help="the job's preset (default: the server's default, cpu)")
    parser.add_argument("--steps", type=int, default=0, help="override the preset's steps (0: the preset's)")
    parser.add_argument("--adapters", type=Path, default=ROOT / "adapters", help="the store to copy")
    parser.add_argument("--probe-category", default="cats", help="the served category Detect is measured on")
    parser.add_argument("--probe-image", type=Path, default=ROOT / "examples" / "cat.jpg")
    parser.add_argument("--rate", type=float, default=5.0, help="probe Detects per second")
    parser.add_argument("--baseline-s", type=float, default=60.0, help="seconds measured before and after the job")
    parser.add_argument("--serve-args", default="", help="more `landmarks serve` flags, one string")
    parser.add_argument("--out", type=Path, help="a folder for the results")
    args = parser.parse_args(argv)
    if args.report:
        return report(args.report, args.mark)
    if args.images is None or args.out is None:
        parser.error("--images and --out are needed to run a job (or --report OUT to read one)")

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="adaptation-job-"))
    store = work / "store"
    shutil.copytree(args.adapters, store)
    upload = work / "photos.zip"
    names = make_zip(args.images, args.count, upload)
    print(f"{len(names)} photos from {args.images} ({names[0]} ... {names[-1]}), {upload.stat().st_size / 1e6:.1f} MB zip")

    extra = ["--http-port", "0", *args.serve_args.split()]
    proc, cmd, port, _ = start_server(store, None, args.out / "server.log", extra)
    http = None
    try:
        for _ in range(100):
            for line in (args.out / "server.log").read_text().splitlines():
                if "demo page on http://" in line:
                    http = line.split("demo page on ")[1].split("/")[2].rstrip(",)")
            if http:
                break
            time.sleep(0.1)
        base = f"http://{http}/v1/adaptations"
        probe = Probe(f"127.0.0.1:{port}", args.probe_category, args.probe_image.read_bytes(), args.rate)
        probe.start()
        time.sleep(args.baseline_s)

        form = ["-F", f"category={args.category}", "-F", f"images=@{upload}", "-F", "activate=true"]
        form += ["-F", f"preset={args.preset}"] if args.preset else []
        form += ["-F", f"steps={args.steps}"] if args.steps else []
        curl = ["curl", "-sS", "--fail-with-body", *form, base]
        submitted = time.monotonic()
        answer = json.loads(subprocess.run(curl, check=True, capture_output=True, text=True).stdout)
        job_id = answer["id"]
        print(f"job {job_id}: {answer['state']}, upload {answer.get('upload')}")

        progress, phase_started, last = [], {}, None
        while True:
            job = get_json(f"{base}/{job_id}")
            phase = job["phase"] or job["state"]
            probe.phase = phase if job["state"] in ("queued", "running") else "after"
            phase_started.setdefault(phase, round(time.monotonic() - submitted, 1))
            progress.append({"t": round(time.monotonic() - probe.t0, 1), "state": job["state"], "phase": phase,
                             "step": job["step"]})
            if (job["state"], phase, job["step"] // 100) != last:
                last = (job["state"], phase, job["step"] // 100)
                print(f"{time.monotonic() - submitted:7.0f} s  {job['state']:9s} {phase:12s} "
                      f"step {job['step']}/{job['steps']}", flush=True)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(5)
        wall_s = round(time.monotonic() - submitted, 1)
        with urllib.request.urlopen(f"{base}/{job_id}/samples.png", timeout=30) as reply:
            (args.out / "samples.png").write_bytes(reply.read())
        time.sleep(args.baseline_s)
        probe.stop.set()
        probe.join()

        served = {}
        if job["state"] == "succeeded":
            with LandmarkClient(f"127.0.0.1:{port}") as client:
                result = client.detect(args.probe_image.read_bytes(), args.category)
                info = next(c for c in client.categories() if c.name == args.category)
                version = next(v for v in info.versions if v.version == job["version"])
                served = {"num_landmarks": len(result.points), "active_version": info.active_version,
                          "precision": version.precision, "precision_reason": version.precision_reason}
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        if (store / args.category).is_dir():  # the registered version, to evaluate or register elsewhere
            shutil.copytree(store / args.category, args.out / "adapter", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)

    by_phase = latency_by_phase(probe.samples)
    result = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "server": " ".join(cmd),
        "curl": " ".join(curl), "photos": {"folder": str(args.images), "count": len(names),
                                         "first": names[0], "last": names[-1]},
        "job": job, "wall_s": wall_s, "probe_started_utc": probe.started_utc, "phase_started_s": phase_started, "served": served,
        "detect_ms_by_phase": by_phase, "probe": {"category": args.probe_category,
                                                   "image": args.probe_image.name, "rate_per_s": args.rate},
    }
    (args.out / "job.json").write_text(json.dumps(result, indent=1))
    (args.out / "samples.json").write_text(json.dumps(probe.samples))
    plot(args.out / "job.png", probe.samples, progress)
    print(json.dumps({k: result[k] for k in ("wall_s", "phase_started_s", "served", "detect_ms_by_phase")}, indent=1))
    print(json.dumps({k: job.get(k) for k in ("state", "validation", "calibration", "upload", "version", "error")},
                     indent=1))
    return 0 if job["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
