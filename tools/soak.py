"""Soak test: run a real `landmarks serve` under mixed traffic for a while and check it stays healthy.

    python tools/soak.py --minutes 30 --clients 4 --out runs/soak
    python tools/soak.py --command serve-ray --serve-args='--replicas 2 --num-cpus 2' --minutes 10 --out runs/soak-ray

What it does
  1. Copies the adapter store (`--adapters`, default the repository's adapters/: core + one
     `<category>.safetensors` per category) into a temporary directory, so admin churn never
     touches the original, and starts `landmarks serve` (or `serve-ray`, `--command`) on it as a
     subprocess (any free port, serve: `--metrics-port 0`; its output goes to OUT/server.log).
  2. For `--minutes`, `--clients` threads send a mix of requests (`--mix`, weights):
       good      Detect on each shipped category with the bundled photos (examples/) and variants:
                 resized, cropped, PNG, raw RGB / grey pixels, with and without a box; half of them
                 with no deadline. Must be OK.
       batch     DetectBatch of 2-6 good items over several categories. Must be OK.
       bad       garbage bytes, truncated JPEG, 1x1 image, raw pixels with a wrong byte count or
                 channel count, unknown category / version, invalid or 10,000-character category
                 name, NaN / inverted box, a DetectBatch with one bad item. Each must get its own
                 INVALID_ARGUMENT / NOT_FOUND.
       cancel    a Detect future cancelled right after it is sent: CANCELLED (or OK if it won).
       deadline  a Detect with a 1 ms deadline: DEADLINE_EXCEEDED (or OK).
       churn     Detect on the churn category while it is being registered / unregistered:
                 OK, NOT_FOUND or UNAVAILABLE.
     and one admin thread cycles a churn category (`--churn-category`, default soak-churn):
     RegisterAdapter(data=<a shipped adapter file>) as v1, v2, ... (also an idempotent repeat and
     an ALREADY_EXISTS conflict), Detect on it, SetActiveVersion, UnregisterAdapter of a version,
     then of the whole category; each step must get its expected code.
  3. Every `--sample-s` seconds it records the server's RSS, threads and open files (from /proc),
     the store's size on disk, categories and folded-cache size (ServerInfo), client-side
     p50/p95/p99 of good Detects in that window, requests/s and the count of every status code
     per traffic kind, and prints one progress line.
  4. Stops traffic, sends SIGTERM and waits for the server to exit.

What it checks (the verdict in soak.json; the exit status is 1 if any check fails)
  good_requests_ok     no good Detect / DetectBatch failed (any non-OK code or malformed answer)
  no_internal_unknown  no INTERNAL or UNKNOWN seen by any client, nor counted by the server's metrics
  expected_codes       every bad / cancelled / deadline / churn call got one of its expected codes
  rss_stable           after warm-up (`--warmup-minutes`, default the first 20% of the run) RSS stays
                       within `--rss-tolerance` (10%) of the first post-warm-up sample (also reported,
                       not checked: the median RSS of each third, which a leak moves and a transient
                       working set does not)
  p99_stable           p99 of good Detects in each third of the post-warm-up run; the largest over the
                       smallest must be at most `--p99-ratio` (1.5)
  clean_exit           the server exited 0 on SIGTERM (within its grace period + 30 s)

Output: OUT/soak.json (config, machine, time series, totals, verdict), OUT/soak.png (RSS, latency
and status codes over time, warm-up shaded) and OUT/server.log.

Only `landmarks.v1` (the generated stubs) and grpc are used on the client side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python tools/soak.py` from anywhere

from landmarks.v1 import landmarks_pb2 as pb
from landmarks.v1 import landmarks_pb2_grpc as pb_grpc

Code = grpc.StatusCode
KINDS = ("good", "batch", "bad", "cancel", "deadline", "churn", "admin")
DEFAULT_MIX = "good=60,batch=8,bad=16,cancel=6,deadline=6,churn=4"
PHOTOS = {"faces": "face.jpg", "cats": "cat.jpg", "shoes": "shoe.jpg"}
MAX_MESSAGE = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------- payloads
def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _raw(image: Image.Image) -> pb.RawImage:
    arr = np.asarray(image)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    return pb.RawImage(pixels=arr.tobytes(), height=arr.shape[0], width=arr.shape[1], channels=channels)


def good_requests(category: str, photo: Path) -> list[tuple[str, pb.DetectRequest]]:
    """(variant name, request): the photo as sent and resized / cropped / re-encoded / raw variants."""
    data = photo.read_bytes()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    crop = img.crop((w // 8, h // 8, w - w // 8, h - h // 8))
    small = img.resize((max(16, w // 2), max(16, h // 2)))
    box = pb.Box(x0=w * 0.1, y0=h * 0.1, x1=w * 0.9, y1=h * 0.9)
    variants = [
        ("jpeg", pb.Image(encoded=data), None),
        ("jpeg-box", pb.Image(encoded=data), box),
        ("half-jpeg", pb.Image(encoded=_encode(small)), None),
        ("crop-png", pb.Image(encoded=_encode(crop, "PNG")), None),
        ("raw-rgb", pb.Image(raw=_raw(img.resize((96, 80)))), None),
        ("raw-grey-box", pb.Image(raw=_raw(img.resize((80, 96)).convert("L"))),
         pb.Box(x0=10, y0=12, x1=70, y1=90)),
    ]
    out = []
    for name, image, b in variants:
        req = pb.DetectRequest(image=image, category=category)
        if b is not None:
            req.box.CopyFrom(b)
        out.append((name, req))
    return out


@dataclass
class Bad:
    name: str
    request: pb.DetectRequest | pb.DetectBatchRequest
    expected: grpc.StatusCode


def bad_requests(category: str, photo: Path) -> list[Bad]:
    data = photo.read_bytes()
    good = pb.Image(encoded=data)
    tiny = _encode(Image.new("RGB", (1, 1), (128, 64, 32)), "PNG")
    raw = _raw(Image.open(photo).convert("RGB").resize((32, 24)))
    short, long_ = pb.RawImage(), pb.RawImage()
    short.CopyFrom(raw)
    short.pixels = raw.pixels[:-1]
    long_.CopyFrom(raw)
    long_.pixels = raw.pixels + b"\0" * 7
    two_channels = pb.RawImage(pixels=b"\0" * (24 * 32 * 2), height=24, width=32, channels=2)
    garbage = random.Random(0).randbytes(2048)

    def req(image=good, cat=category, box=None, version=""):
        r = pb.DetectRequest(image=image, category=cat, version=version)
        if box is not None:
            r.box.CopyFrom(box)
        return r

    inv = Code.INVALID_ARGUMENT
    return [
        Bad("garbage-bytes", req(pb.Image(encoded=garbage)), inv),
        Bad("empty-image", req(pb.Image()), inv),
        Bad("truncated-jpeg", req(pb.Image(encoded=data[: len(data) // 2])), inv),
        Bad("jpeg-header-only", req(pb.Image(encoded=data[:20])), inv),
        Bad("1x1-image", req(pb.Image(encoded=tiny)), inv),
        Bad("raw-short", req(pb.Image(raw=short)), inv),
        Bad("raw-long", req(pb.Image(raw=long_)), inv),
        Bad("raw-2-channels", req(pb.Image(raw=two_channels)), inv),
        Bad("unknown-category", req(cat="no-such-category"), Code.NOT_FOUND),
        Bad("unknown-version", req(version="no-such-version"), Code.NOT_FOUND),
        Bad("invalid-category", req(cat="Bad Name!"), inv),
        Bad("empty-category", req(cat=""), inv),
        Bad("10000-char-category", req(cat="a" * 10_000), inv),
        Bad("nan-box", req(box=pb.Box(x0=float("nan"), y0=0, x1=10, y1=10)), inv),
        Bad("inverted-box", req(box=pb.Box(x0=50, y0=50, x1=10, y1=10)), inv),
        Bad("batch-one-bad", pb.DetectBatchRequest(requests=[req(), req(pb.Image(encoded=garbage)), req()]), inv),
    ]


# ----------------------------------------------------------------------------------- records
class Stats:
    """Thread-safe counts per (kind, code), good-Detect latencies, and the first unexpected outcomes."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.totals: dict[str, Counter] = defaultdict(Counter)
        self.window: dict[str, Counter] = defaultdict(Counter)
        self.window_latency: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (t, ms) of every good Detect, for the p99 thirds
        self.unexpected: list[dict] = []
        self.unexpected_count: Counter = Counter()

    def record(self, kind: str, code: str, ok: bool, latency_ms: float | None = None, detail: str = "") -> None:
        now = time.monotonic() - self.t0
        with self.lock:
            self.totals[kind][code] += 1
            self.window[kind][code] += 1
            if latency_ms is not None:
                self.window_latency.append(latency_ms)
                self.latencies.append((now, latency_ms))
            if not ok:
                self.unexpected_count[kind] += 1
                if len(self.unexpected) < 100:  # enough to reproduce; a broken server would flood it
                    self.unexpected.append({"t": round(now, 2), "kind": kind, "code": code, "detail": detail[:500]})

    def take_window(self) -> tuple[dict[str, Counter], list[float]]:
        with self.lock:
            window, lat = self.window, self.window_latency
            self.window, self.window_latency = defaultdict(Counter), []
        return window, lat


def _code_of(exc: grpc.RpcError) -> str:
    return exc.code().name if exc.code() is not None else "UNKNOWN"


def _check_response(resp: pb.DetectResponse, category: str, k: int) -> str:
    """'' if the answer looks right, else why not."""
    if resp.category != category:
        return f"answered category {resp.category!r}"
    if len(resp.landmarks) != k:
        return f"{len(resp.landmarks)} landmarks, expected K={k}"
    if not all(math.isfinite(p.x) and math.isfinite(p.y) and math.isfinite(p.confidence) for p in resp.landmarks):
        return "non-finite landmark"
    return ""


# ----------------------------------------------------------------------------------- traffic
class Traffic:
    def __init__(self, address: str, stats: Stats, categories: dict[str, int], examples: Path, mix: dict[str, float],
                 churn_category: str, timeout: float, think_s: float, seed: int) -> None:
        self.address, self.stats, self.categories = address, stats, categories
        self.mix, self.churn_category, self.timeout, self.think_s, self.seed = (
            mix, churn_category, timeout, think_s, seed)
        self.stop = threading.Event()
        self.good: list[tuple[str, str, pb.DetectRequest]] = []  # (category, variant, request)
        for cat in sorted(categories):
            for variant, req in good_requests(cat, examples / PHOTOS.get(cat, "face.jpg")):
                self.good.append((cat, variant, req))
        first = min(categories)
        self.bad = bad_requests(first, examples / PHOTOS.get(first, "face.jpg"))
        self.churn_request = pb.DetectRequest(image=pb.Image(encoded=(examples / "face.jpg").read_bytes()),
                                              category=churn_category)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", MAX_MESSAGE),
                                                            ("grpc.max_receive_message_length", MAX_MESSAGE)])

    # one client thread: a weighted random choice of traffic kind per call, closed loop
    def client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = zip(*self.mix.items())
        with self.channel() as ch:
            stub = pb_grpc.LandmarkServiceStub(ch)
            while not self.stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                try:
                    getattr(self, f"_{kind}")(stub, rng)
                except Exception as exc:  # noqa: BLE001  a client bug must show, not kill the thread silently
                    self.stats.record(kind, "CLIENT_ERROR", False, detail=repr(exc))
                if self.think_s:
                    self.stop.wait(self.think_s)

    def _good(self, stub, rng) -> None:
        cat, variant, req = rng.choice(self.good)
        # half the calls carry no deadline at all, as a grpcurl user's or a plain stub's do (the client
        # still stops waiting after --rpc-timeout-s, and counts that as a failure)
        deadline = rng.random() < 0.5
        if not deadline:
            variant += " (no deadline)"
        t = time.perf_counter()
        try:
            if deadline:
                resp = stub.Detect(req, timeout=self.timeout)
            else:
                call = stub.Detect.future(req)
                try:
                    resp = call.result(timeout=self.timeout)
                except grpc.FutureTimeoutError:
                    call.cancel()
                    self.stats.record("good", "CLIENT_TIMEOUT", False, detail=f"{cat}/{variant}: no answer")
                    return
        except grpc.RpcError as exc:
            self.stats.record("good", _code_of(exc), False, detail=f"{cat}/{variant}: {exc.details()}")
            return
        ms = (time.perf_counter() - t) * 1e3
        why = _check_response(resp, cat, self.categories[cat])
        self.stats.record("good", "OK" if not why else "BAD_RESPONSE", not why, ms if not why else None,
                          f"{cat}/{variant}: {why}")

    def _batch(self, stub, rng) -> None:
        items = [rng.choice(self.good) for _ in range(rng.randint(2, 6))]
        try:
            resp = stub.DetectBatch(pb.DetectBatchRequest(requests=[r for _, _, r in items]), timeout=self.timeout)
        except grpc.RpcError as exc:
            self.stats.record("batch", _code_of(exc), False, detail=f"{[c for c, _, _ in items]}: {exc.details()}")
            return
        why = (f"{len(resp.responses)} answers for {len(items)} items" if len(resp.responses) != len(items) else
               next((w for (c, _, _), r in zip(items, resp.responses) if (w := _check_response(r, c, self.categories[c]))),
                    ""))
        self.stats.record("batch", "OK" if not why else "BAD_RESPONSE", not why, detail=why)

    def _bad(self, stub, rng) -> None:
        bad = rng.choice(self.bad)
        call = stub.DetectBatch if isinstance(bad.request, pb.DetectBatchRequest) else stub.Detect
        try:
            call(bad.request, timeout=self.timeout)
            code, details = "OK", "accepted"
        except grpc.RpcError as exc:
            code, details = _code_of(exc), exc.details() or ""
        self.stats.record("bad", code, code == bad.expected.name,
                          detail=f"{bad.name}: expected {bad.expected.name}, got {code}: {details}")

    def _cancel(self, stub, rng) -> None:
        _, variant, req = rng.choice(self.good)
        future = stub.Detect.future(req, timeout=self.timeout)
        future.cancel()
        try:
            future.result()
            code = "OK"
        except grpc.FutureCancelledError:
            code = "CANCELLED"
        except grpc.RpcError as exc:
            code = _code_of(exc)
        self.stats.record("cancel", code, code in ("CANCELLED", "OK"), detail=f"{req.category}/{variant}")

    def _deadline(self, stub, rng) -> None:
        _, variant, req = rng.choice(self.good)
        try:
            stub.Detect(req, timeout=0.001)
            code, details = "OK", ""
        except grpc.RpcError as exc:
            code, details = _code_of(exc), exc.details() or ""
        self.stats.record("deadline", code, code in ("DEADLINE_EXCEEDED", "OK"),
                          detail=f"{req.category}/{variant}: {details}")

    def _churn(self, stub, rng) -> None:
        # the admin thread may be registering or removing this category right now
        try:
            stub.Detect(self.churn_request, timeout=self.timeout)
            code, details = "OK", ""
        except grpc.RpcError as exc:
            code, details = _code_of(exc), exc.details() or ""
        self.stats.record("churn", code, code in ("OK", "NOT_FOUND", "UNAVAILABLE"), detail=details)

    # the admin thread: one churn cycle after another, each step with its expected code
    def admin(self, data: bytes, other: bytes | None, pause_s: float) -> None:
        cat = self.churn_category
        with self.channel() as ch:
            admin, stub = pb_grpc.AdminServiceStub(ch), pb_grpc.LandmarkServiceStub(ch)

            def step(name: str, call, request, expected=("OK",), check=None) -> bool:
                if self.stop.is_set():
                    return False
                try:
                    resp = call(request, timeout=max(self.timeout, 60))
                    code, details = "OK", ""
                    if check is not None and (why := check(resp)):
                        code, details = "BAD_RESPONSE", why
                except grpc.RpcError as exc:
                    code, details = _code_of(exc), exc.details() or ""
                self.stats.record("admin", code, code in expected, detail=f"{name}: got {code}: {details}")
                self.stop.wait(pause_s)
                return code in expected

            def answered_by(version):
                return lambda r: "" if r.version == version else f"answered by {r.version!r}, expected {version!r}"

            detect = pb.DetectRequest()
            detect.CopyFrom(self.churn_request)
            n = 0
            while not self.stop.is_set():
                a, b = f"v{n + 1}", f"v{n + 2}"
                n += 2
                ok = step(f"register {a}", admin.RegisterAdapter,
                          pb.RegisterAdapterRequest(category=cat, version=a, data=data))
                if not ok:  # clean up whatever a failed step left, then start over
                    step("unregister after failure", admin.UnregisterAdapter,
                         pb.UnregisterAdapterRequest(category=cat), ("OK", "NOT_FOUND"))
                    continue
                step(f"detect {a}", stub.Detect, detect, check=answered_by(a))
                step(f"re-register {a} (idempotent)", admin.RegisterAdapter,
                     pb.RegisterAdapterRequest(category=cat, version=a, data=data),
                     check=lambda r: "" if not r.created else "created a second time")
                if other is not None:
                    step(f"register {a} with other content", admin.RegisterAdapter,
                         pb.RegisterAdapterRequest(category=cat, version=a, data=other), ("ALREADY_EXISTS",))
                step(f"register {b} inactive", admin.RegisterAdapter,
                     pb.RegisterAdapterRequest(category=cat, version=b, data=data, activate=False))
                step(f"detect {b} by version", stub.Detect,
                     pb.DetectRequest(image=detect.image, category=cat, version=b), check=answered_by(b))
                step(f"detect active {a}", stub.Detect, detect, check=answered_by(a))
                step(f"activate {b}", admin.SetActiveVersion, pb.SetActiveVersionRequest(category=cat, version=b))
                step(f"detect {b}", stub.Detect, detect, check=answered_by(b))
                step(f"unregister active {b}", admin.UnregisterAdapter,
                     pb.UnregisterAdapterRequest(category=cat, version=b), ("FAILED_PRECONDITION",))
                step(f"unregister {a}", admin.UnregisterAdapter, pb.UnregisterAdapterRequest(category=cat, version=a))
                step("activate a removed version", admin.SetActiveVersion,
                     pb.SetActiveVersionRequest(category=cat, version=a), ("NOT_FOUND",))
                step("unregister the category", admin.UnregisterAdapter, pb.UnregisterAdapterRequest(category=cat))
                step("detect after unregister", stub.Detect, detect, ("NOT_FOUND", "UNAVAILABLE"))
            # leave the store as it was (the server is stopped next; this keeps the log quiet)
            with contextlib.suppress(grpc.RpcError):
                admin.UnregisterAdapter(pb.UnregisterAdapterRequest(category=cat), timeout=30)


# ------------------------------------------------------------------------------------ server
def start_server(store: Path, core: str | None, log_path: Path, extra: list[str], timeout: float = 300.0,
                 command: str = "serve"):
    """`landmarks serve` (or `serve-ray`) on `store`, any free port (serve: metrics on):
    (process, command line, port, metrics port or None)."""
    script = f"import sys; from landmarks.cli import main; sys.exit(main([{command!r}] + sys.argv[1:]))"
    cmd = [sys.executable, "-c", script, "--port", "0", "--adapters", str(store)]
    if command == "serve":
        cmd += ["--metrics-port", "0"]
    if core:
        cmd += ["--core", core]
    cmd += extra
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in ("LANDMARKS_TOKEN", "LANDMARKS_ADMIN_TOKEN"):  # the soak's clients send no tokens
        env.pop(name, None)
    log = open(log_path, "w")  # noqa: SIM115  a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    pattern = re.compile(r"listening on \S+:(\d+) (?:.*?metrics on \S+:(\d+))?")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = pattern.search(log_path.read_text())
        if m:
            return proc, cmd, int(m.group(1)), int(m.group(2)) if m.group(2) else None
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server did not start (rc {proc.returncode}):\n{log_path.read_text()[-3000:]}")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (serve-ray's Ray processes are its children's children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def proc_status(pid: int) -> dict:
    """RSS (MB) and threads from /proc/PID/status, open file descriptors from /proc/PID/fd, summed over
    the server's process tree; `processes` counts it."""
    out = {"rss_mb": 0.0, "threads": 0, "fds": 0, "processes": 0}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_mb"] += int(value.split()[0]) / 1024
                elif key == "Threads":
                    out["threads"] += int(value)
            out["fds"] += len(os.listdir(f"/proc/{p}/fd"))
            out["processes"] += 1
    return out


def scrape_outcomes(metrics_port: int) -> dict[str, float]:
    """landmarks_requests_total summed per outcome, from the server's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: Counter = Counter()
    for line in text.splitlines():
        if line.startswith("landmarks_requests_total{"):
            m = re.search(r'outcome="([^"]*)"', line)
            if m:
                out[m.group(1)] += float(line.rsplit(" ", 1)[1])
    return dict(out)


def _ms(value: float | None) -> str:
    return f"{value:7.1f}" if value is not None else "      -"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
        info["cpu"] = fields.get("Model name")
        info["cores"] = int(fields.get("CPU(s)", info["cores"]))
    return info


# ------------------------------------------------------------------------------------ verdict
def percentiles(values) -> dict:
    if len(values) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None}
    p = np.percentile(np.asarray(values), [50, 95, 99])
    return {"n": len(values), "p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "p99": round(float(p[2]), 2)}


def verdict(samples, latencies, totals, unexpected_count, server_outcomes, exit_code, warmup_s, args) -> dict:
    checks = {}
    good = {k: dict(totals.get(k, {})) for k in ("good", "batch")}
    failed = sum(n for k in good.values() for code, n in k.items() if code != "OK")
    checks["good_requests_ok"] = {"pass": failed == 0 and good["good"].get("OK", 0) > 0, "failed": failed,
                                  "ok": sum(k.get("OK", 0) for k in good.values())}
    client_bad = {f"{kind}/{code}": n for kind, codes in totals.items() for code, n in codes.items()
                  if code in ("INTERNAL", "UNKNOWN")}
    server_bad = {k: v for k, v in server_outcomes.items() if k in ("internal", "unknown") and v}
    checks["no_internal_unknown"] = {"pass": not client_bad and not server_bad, "client": client_bad,
                                     "server_metrics": server_bad}
    checks["expected_codes"] = {"pass": not any(unexpected_count[k] for k in ("bad", "cancel", "deadline", "churn",
                                                                             "admin")),
                                "unexpected": {k: n for k, n in unexpected_count.items() if n}}
    post = [s for s in samples if s["t"] >= warmup_s and s.get("rss_mb")]
    if len(post) >= 2:
        first = post[0]["rss_mb"]
        rel = [s["rss_mb"] / first - 1 for s in post]
        # also the median per third: a leak moves it, a working set that comes and goes does not
        thirds = [[s["rss_mb"] for s in post[len(post) * i // 3:len(post) * (i + 1) // 3]] for i in range(3)]
        medians = [float(np.median(t)) for t in thirds if t]
        checks["rss_stable"] = {"pass": max(rel) <= args.rss_tolerance and min(rel) >= -args.rss_tolerance,
                                "first_mb": round(first, 1), "max_rel": round(max(rel), 4),
                                "min_rel": round(min(rel), 4), "last_rel": round(rel[-1], 4),
                                "tolerance": args.rss_tolerance,
                                "median_mb_by_third": [round(m, 1) for m in medians],
                                "median_ratio_max_min": round(max(medians) / min(medians), 4)}
    else:
        checks["rss_stable"] = {"pass": False, "why": "fewer than 2 samples after warm-up"}
    post_lat = [(t, ms) for t, ms in latencies if t >= warmup_s]
    if len(post_lat) >= 30:
        end = max(t for t, _ in post_lat)
        edges = [warmup_s + (end - warmup_s) * i / 3 for i in range(4)]
        thirds = [[ms for t, ms in post_lat if edges[i] <= t < edges[i + 1] or (i == 2 and t == end)]
                  for i in range(3)]
        p99 = [float(np.percentile(x, 99)) if x else None for x in thirds]
        ratio = max(p99) / min(p99) if all(p99) else None
        checks["p99_stable"] = {"pass": ratio is not None and ratio <= args.p99_ratio,
                                "p99_ms_by_third": [round(p, 2) if p else None for p in p99],
                                "n_by_third": [len(x) for x in thirds],
                                "ratio_max_min": round(ratio, 3) if ratio else None,
                                "ratio_last_first": round(p99[2] / p99[0], 3) if all(p99) else None,
                                "max_ratio": args.p99_ratio}
    else:
        checks["p99_stable"] = {"pass": False, "why": f"only {len(post_lat)} good Detects after warm-up"}
    checks["clean_exit"] = {"pass": exit_code == 0, "exit_code": exit_code}
    return {"pass": all(c["pass"] for c in checks.values()), "checks": checks}


# --------------------------------------------------------------------------------------- plot
def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    warm = result["config"]["warmup_s"] / 60
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    ax = axes[0]
    ax.plot(t, [s.get("rss_mb") for s in samples], "o-", ms=3, label="server RSS")
    rss = result["verdict"]["checks"]["rss_stable"]
    if "first_mb" in rss:
        first, tol = rss["first_mb"], rss["tolerance"]
        ax.axhspan(first * (1 - tol), first * (1 + tol), color="tab:green", alpha=0.1,
                   label=f"±{tol:.0%} of first post-warm-up sample")
    ax.set_ylabel("RSS (MB)")
    ax.legend(loc="lower right")
    ax2 = ax.twinx()  # a thread or descriptor leak shows here before it shows in RSS
    ax2.plot(t, [s.get("threads") for s in samples], color="tab:purple", lw=1, alpha=0.7, label="threads")
    ax2.plot(t, [s.get("fds") for s in samples], color="tab:brown", lw=1, alpha=0.7, label="open fds")
    ax2.set_ylabel("threads, open fds")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower center", fontsize="small")
    ax = axes[1]
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", "-")):
        ax.plot(t, [s["good_latency"][key] for s in samples], style, marker="o", ms=3, label=f"good Detect {key}")
    ax.set_ylabel("latency per window (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize="small")
    ax2 = ax.twinx()
    ax2.plot(t, [s["rps"] for s in samples], color="grey", alpha=0.6, lw=1)
    ax2.set_ylabel("requests/s (grey)")
    ax = axes[2]
    codes = sorted({c for s in samples for k in s["counts"].values() for c in k})
    palette = [f"tab:{c}" for c in ("blue", "orange", "purple", "brown", "pink", "gray", "olive", "cyan")]
    colors = itertools.cycle([*palette, "navy", "teal", "darkkhaki"])  # no red: red marks the failures
    for code in codes:
        ax.plot(t, [sum(k.get(code, 0) for k in s["counts"].values()) for s in samples], marker="o", ms=3,
                label=code, **({"color": "black", "lw": 2.5} if code in ("INTERNAL", "UNKNOWN") else
                               {"color": "tab:green" if code == "OK" else next(colors)}))
    ax.plot(t, [s["unexpected"] for s in samples], "x-", color="red", lw=2, label="unexpected / failed")
    ax.set_ylabel("calls per window (all kinds)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("minutes since traffic started")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize="small", ncol=5)
    for ax in axes:
        ax.axvspan(min(t, default=0), warm, color="grey", alpha=0.15)
        ax.grid(alpha=0.3)
    axes[0].text(warm / 2, 0.03, "warm-up", transform=axes[0].get_xaxis_transform(), ha="center", va="bottom")
    v = result["verdict"]
    failing = [name for name, c in v["checks"].items() if not c["pass"]]
    fig.suptitle(f"landmarks serve soak: {result['config']['minutes']:g} min, {result['config']['clients']} clients, "
                 f"{result['machine'].get('cpu') or ''} ({result['machine'].get('cores')} cores)\n"
                 f"verdict: {'PASS' if v['pass'] else 'FAIL: ' + ', '.join(failing)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------- main
def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS or name == "admin":
            raise argparse.ArgumentTypeError(f"unknown traffic kind {name!r} (one of good, batch, bad, cancel, "
                                             "deadline, churn)")
        mix[name] = float(weight)
    if not any(w > 0 for w in mix.values()):
        raise argparse.ArgumentTypeError("the mix needs a positive weight")
    return {k: w for k, w in mix.items() if w > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to send traffic (default 30)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX,
                        help=f"traffic kinds and weights for the client threads (default {DEFAULT_MIX})")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="excluded from the RSS and p99 checks (default 20%% of --minutes)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"), help="output directory (default runs/soak)")
    parser.add_argument("--adapters", type=Path, default=ROOT / "adapters",
                        help="store to copy (its *.safetensors) and serve (default the repository's adapters/)")
    parser.add_argument("--core", default=None, help="core file for the server (default: the store's core)")
    parser.add_argument("--serve-args", default="",
                        help="more `landmarks serve` options, one string: --serve-args='--threads 2 --cache-mb 64'")
    parser.add_argument("--command", choices=("serve", "serve-ray"), default="serve",
                        help="the server to soak: `landmarks serve` or `landmarks serve-ray` (its whole process "
                             "tree's RSS; add e.g. --serve-args='--replicas 2 --num-cpus 2') (default serve)")
    parser.add_argument("--churn-category", default="soak-churn", help="category the admin thread churns")
    parser.add_argument("--churn-pause-s", type=float, default=0.5,
                        help="pause after each admin step (default 0.5; negative: no admin churn)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause after each client call (default 0)")
    parser.add_argument("--rpc-timeout-s", type=float, default=30.0,
                        help="deadline of good calls; exceeding it counts as a failure (default 30)")
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="RSS band after warm-up (default 0.10)")
    parser.add_argument("--p99-ratio", type=float, default=1.5,
                        help="largest / smallest p99 of the post-warm-up thirds allowed (default 1.5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mix = args.mix if isinstance(args.mix, dict) else parse_mix(args.mix)
    duration = args.minutes * 60
    warmup_s = (args.warmup_minutes if args.warmup_minutes is not None else 0.2 * args.minutes) * 60
    examples = ROOT / "examples"
    args.out.mkdir(parents=True, exist_ok=True)

    files = sorted(p for p in args.adapters.glob("*.safetensors"))
    if not any(p.name != "core.safetensors" for p in files):
        parser.error(f"{args.adapters} has no <category>.safetensors adapters")
    tmp = Path(tempfile.mkdtemp(prefix="soak-store-"))
    for p in files:
        shutil.copy2(p, tmp / p.name)
    log_path = args.out / "server.log"
    print(f"store copied to {tmp}; starting the server (log: {log_path})", flush=True)
    try:
        proc, cmd, port, metrics_port = start_server(tmp, args.core, log_path, shlex.split(args.serve_args),
                                                     command=args.command)
    except RuntimeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(exc, file=sys.stderr)
        return 2
    address = f"127.0.0.1:{port}"
    exit_code, stop_s = None, None
    interrupted = False
    try:
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
            admin = pb_grpc.AdminServiceStub(ch)
            info = admin.ServerInfo(pb.ServerInfoRequest(), timeout=30)
            listed = admin.ListCategories(pb.ListCategoriesRequest(), timeout=30).categories
        categories = {c.name: c.num_landmarks for c in listed if c.state == pb.READY}
        if args.churn_category in categories or not categories:
            raise RuntimeError(f"need READY categories other than {args.churn_category!r}, got {sorted(categories)}")
        churn_files = [tmp / f"{c}.safetensors" for c in sorted(categories) if (tmp / f"{c}.safetensors").exists()]
        print(f"server pid {proc.pid} on {address} (metrics :{metrics_port}), backend {info.backend}, "
              f"categories {categories}", flush=True)

        t0 = time.monotonic()
        stats = Stats(t0)
        traffic = Traffic(address, stats, categories, examples, mix, args.churn_category, args.rpc_timeout_s,
                          args.think_ms / 1e3, args.seed)
        threads = [threading.Thread(target=traffic.client, args=(i,), name=f"client-{i}", daemon=True)
                   for i in range(args.clients)]
        if args.churn_pause_s >= 0:
            data = churn_files[0].read_bytes()
            other = churn_files[1].read_bytes() if len(churn_files) > 1 else None
            threads.append(threading.Thread(target=traffic.admin, args=(data, other, args.churn_pause_s),
                                            name="admin", daemon=True))
        samples: list[dict] = []
        info_channel = grpc.insecure_channel(address)
        admin = pb_grpc.AdminServiceStub(info_channel)
        last = t0
        server_outcomes: dict[str, float] = {}

        def sample(final: bool = False) -> None:
            nonlocal last, server_outcomes
            now = time.monotonic()
            window, lat = stats.take_window()
            n = sum(sum(c.values()) for c in window.values())
            s = {"t": round(now - t0, 2), "window_s": round(now - last, 2), **proc_status(proc.pid)}
            last = now
            with contextlib.suppress(grpc.RpcError):
                si = admin.ServerInfo(pb.ServerInfoRequest(), timeout=10)
                s["cache_mb"] = round(si.cache.resident_bytes / 2**20, 2)
                s["cache_entries"] = si.cache.entries
                s["categories"] = len(admin.ListCategories(pb.ListCategoriesRequest(), timeout=10).categories)
            if metrics_port is not None:  # (serve-ray: Ray's metrics; the clients' counts stand alone)
                with contextlib.suppress(OSError):
                    server_outcomes = scrape_outcomes(metrics_port)
            s["store_kb"] = round(dir_bytes(tmp) / 1024, 1)
            s["requests"] = n
            s["rps"] = round(n / max(s["window_s"], 1e-9), 2)
            s["good_latency"] = percentiles(lat)
            s["counts"] = {k: dict(c) for k, c in sorted(window.items())}
            with stats.lock:
                s["unexpected"] = sum(stats.unexpected_count.values()) - sum(x["unexpected_total"]
                                                                              for x in samples[-1:])
                s["unexpected_total"] = sum(stats.unexpected_count.values())
            s["server_internal"] = server_outcomes.get("internal", 0) + server_outcomes.get("unknown", 0)
            samples.append(s)
            g = s["good_latency"]
            print(f"[{s['t']:7.0f}s / {duration:.0f}s]{' final' if final else ''} rss {s.get('rss_mb', 0):7.1f} MB"
                  f"  thr {s.get('threads', '-')}  fds {s.get('fds', '-')}  {s['rps']:6.1f} req/s"
                  f"  good {g['n']:5d} p50 {_ms(g['p50'])} p99 {_ms(g['p99'])} ms  cats {s.get('categories', '-')}"
                  f"  unexpected {s['unexpected_total']}  server internal {s['server_internal']:g}", flush=True)

        try:
            sample()  # t = 0: the idle server, before any traffic
            for th in threads:
                th.start()
            while time.monotonic() - t0 < duration:
                time.sleep(min(args.sample_s, max(0.0, duration - (time.monotonic() - t0))))
                if proc.poll() is not None:
                    print(f"the server died (rc {proc.returncode}); see {log_path}", flush=True)
                    break
                if time.monotonic() - t0 < duration - 0.2 * args.sample_s:
                    sample()
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: stopping traffic, then the server", flush=True)
        traffic.stop.set()
        for th in threads:
            th.join(timeout=args.rpc_timeout_s + 60)
        if proc.poll() is None:
            sample(final=True)
        info_channel.close()
    finally:
        # always stop what we started: SIGTERM, then a kill if it hangs
        if proc.poll() is None:
            t_stop = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            grace = 10.0
            m = re.search(r"--grace[= ](\S+)", args.serve_args)
            if m:
                grace = float(m.group(1))
            try:
                exit_code = proc.wait(timeout=grace + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                exit_code = "hung: killed after SIGTERM"
            stop_s = round(time.monotonic() - t_stop, 2)
        else:
            exit_code = f"died during the run: rc {proc.returncode}"
        shutil.rmtree(tmp, ignore_errors=True)

    log_text = log_path.read_text(errors="replace")
    totals = {k: dict(c) for k, c in sorted(stats.totals.items())}
    result = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "mix": mix,
                   "warmup_s": warmup_s, "server_command": cmd, "categories": categories,
                   "churn_source": churn_files[0].name if args.churn_pause_s >= 0 else None,
                   "backend": info.backend, "device": info.device, "server_version": info.server_version,
                   "versions": dict(info.versions)},
        "machine": machine(),
        "server": {"pid": proc.pid, "port": port, "metrics_port": metrics_port, "exit_code": exit_code,
                   "stop_seconds": stop_s, "printed_stopped": "landmarks server stopped" in log_text,
                   "tracebacks_in_log": log_text.count("Traceback"), "log_tail": log_text[-4000:]},
        "duration_s": round(samples[-1]["t"], 2) if samples else 0,
        "interrupted": interrupted,
        "samples": samples,
        "totals": totals,
        "requests": sum(sum(c.values()) for c in totals.values()),
        "server_outcomes": server_outcomes,
        "good_latency": percentiles([ms for _, ms in stats.latencies]),
        "unexpected_examples": stats.unexpected,
    }
    result["verdict"] = verdict(samples, stats.latencies, totals, stats.unexpected_count, server_outcomes,
                                exit_code, warmup_s, args)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(args.out / "soak.png", result)
    v = result["verdict"]
    print(f"\n{result['requests']} requests in {result['duration_s']:.0f} s; server exit {exit_code} after SIGTERM "
          f"({stop_s} s)")
    for name, c in v["checks"].items():
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {name}: "
              + ", ".join(f"{k}={val}" for k, val in c.items() if k != "pass"))
    for u in stats.unexpected[:10]:
        print(f"  unexpected: {u}")
    print(f"verdict: {'PASS' if v['pass'] else 'FAIL'}; wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if v["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
