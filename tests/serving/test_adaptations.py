"""Adaptation jobs in the server (serving.adaptations) over HTTP, end to end on a real socket: a job
from photos to a Detect on the new category, cancel, a restart mid-job that resumes from its
checkpoint, and every refused upload with its status and reason. The jobs run the smoke preset on the
tiny core and a few 40 px synthetic images (seconds)."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.adaptations import PRESET_BATCH
from tests.serving.helpers import png_bytes, start_server
from training.job import HOLD_ENV

TOKEN = "admin-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def photo(seed: int) -> bytes:
    """A 40 px 'object': a coloured box on a plain background, placed at random."""
    rng = np.random.default_rng(seed)
    pixels = np.full((40, 40, 3), rng.integers(120, 220, 3), np.uint8)
    x, y = rng.integers(4, 16, 2)
    pixels[y:y + 18, x:x + 16] = rng.integers(0, 100, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


PHOTOS = [(f"p{i}.png", photo(i)) for i in range(10)]


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields]
    for field, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(port: int, path: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            status, body, kind = reply.status, reply.read(), reply.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body


def submit(port: int, files=PHOTOS, **fields: str):
    fields = {"category": "mugs", "preset": "smoke", "num_landmarks": "3", **fields}
    body, kind = multipart(list(fields.items()), [("images", name, data) for name, data in files])
    return call(port, "/v1/adaptations", "POST", body, {"content-type": kind})


def events(port: int, job_id: str, until=lambda job: False) -> list[dict]:
    """The job's server-sent events, read until it ends or `until(job)` holds."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/adaptations/{job_id}/events", headers=AUTH)
    seen = []
    with urllib.request.urlopen(req, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["state"] in ("succeeded", "failed", "cancelled") or until(seen[-1]):
                    return seen
    return seen


def jobs_server(store: Path, **overrides):
    settings = {"http_port": 0, "admin_token": TOKEN, "adaptation_nice": 0, **overrides}
    return start_server(store, **settings)


def test_presets_known_to_the_server_are_the_trainers():
    from training.adapt import PRESETS

    assert {name: preset.get("batch_size", 16) for name, preset in PRESETS.items()} == PRESET_BATCH


def test_a_job_over_http_registers_a_version_that_detects(store):
    server = jobs_server(store)
    try:
        status, job = submit(server.http_port, activate="true")
        assert status == 202, job
        assert job["state"] == "queued" and job["category"] == "mugs" and job["upload"]["images"] == 10
        seen = events(server.http_port, job["id"])
        done = seen[-1]
        assert done["state"] == "succeeded", done
        assert any(e["state"] == "running" and e["step"] >= 1 for e in seen)
        assert done["version"] == f"job-{job['id']}" and done["step"] == done["steps"] == 3
        assert {"consistency", "spread", "background_points", "passed"} <= set(done["validation"])
        assert "accepted" in done["calibration"]
        status, got = call(server.http_port, f"/v1/adaptations/{job['id']}")
        assert status == 200 and got["state"] == "succeeded" and got["activated"]
        status, listed = call(server.http_port, "/v1/adaptations")
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]
        paths = call(server.http_port, "/openapi.json")[1]["paths"]
        assert {"/v1/adaptations", "/v1/adaptations/{job_id}", "/v1/adaptations/{job_id}/events",
                "/v1/adaptations/{job_id}/samples.png"} <= set(paths)
        status, picture = call(server.http_port, f"/v1/adaptations/{job['id']}/samples.png")
        assert status == 200 and picture[:8] == b"\x89PNG\r\n\x1a\n"
        # the new category serves at once
        status, detection = call(server.http_port, "/v1/detect?category=mugs", "POST", photo(99),
                                 {"content-type": "image/png"})
        assert status == 200, detection
        assert detection["version"] == done["version"] and len(detection["landmarks"]) == 3
        # the job's images and checkpoints are gone; its samples picture stays
        folder = store / ".jobs" / job["id"]
        assert (folder / "samples.png").is_file()
        assert not (folder / "images").exists() and not (folder / "run").exists()
    finally:
        server.shutdown(grace=0)


def test_cancel_stops_the_job_and_frees_its_files(store, monkeypatch):
    monkeypatch.setenv(HOLD_ENV, "1")
    server = jobs_server(store)
    try:
        status, job = submit(server.http_port, steps="5")
        assert status == 202
        events(server.http_port, job["id"], until=lambda j: j["step"] >= 1)
        assert (store / ".jobs" / job["id"] / "run" / "checkpoint.pt").parent.is_dir()
        status, cancelled = call(server.http_port, f"/v1/adaptations/{job['id']}", "DELETE")
        assert status == 200 and cancelled["state"] == "cancelled"
        assert not (store / ".jobs" / job["id"]).exists()
        assert call(server.http_port, f"/v1/adaptations/{job['id']}")[1]["state"] == "cancelled"
        status, categories = call(server.http_port, "/v1/categories")
        assert "mugs" not in [c["name"] for c in categories["categories"]]
        # cancelling again answers as it is; a job that does not exist is 404
        assert call(server.http_port, f"/v1/adaptations/{job['id']}", "DELETE")[0] == 200
        for method, path in (("DELETE", ""), ("GET", ""), ("GET", "/events"), ("GET", "/samples.png")):
            status, error = call(server.http_port, f"/v1/adaptations/nosuchjob{path}", method)
            assert status == 404 and error["details"][0]["reason"] == "JOB_NOT_FOUND", (method, path, error)
    finally:
        server.shutdown(grace=0)


def test_a_restart_mid_job_resumes_from_its_checkpoint(store, monkeypatch):
    monkeypatch.setenv(HOLD_ENV, "2")  # the smoke preset checkpoints every 2 steps
    server = jobs_server(store)
    try:
        status, job = submit(server.http_port, steps="4")
        assert status == 202
        events(server.http_port, job["id"], until=lambda j: j["step"] >= 2)
    finally:
        server.shutdown(grace=0)
    folder = store / ".jobs" / job["id"]
    assert (folder / "run" / "checkpoint.pt").is_file()
    monkeypatch.delenv(HOLD_ENV)
    server = jobs_server(store)
    try:
        status, again = call(server.http_port, f"/v1/adaptations/{job['id']}")
        assert status == 200 and again["state"] in ("queued", "running"), again
        done = events(server.http_port, job["id"])[-1]
        assert done["state"] == "succeeded" and done["steps"] == 4, done
        assert "resumed from" in (folder / "worker.log").read_text() and "at step 2" in (folder / "worker.log").read_text()
    finally:
        server.shutdown(grace=0)


def _zip(entries: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def refusing_server(artifacts, tmp_path_factory):
    """One server for the refused uploads (none of them starts a job)."""
    store = tmp_path_factory.mktemp("jobs") / "adapters"
    store.mkdir()
    shutil.copy(artifacts.core, store / "core.safetensors")
    handle = jobs_server(store, max_adaptation_images=12, max_adaptation_upload_bytes=1 << 20)
    yield handle
    handle.shutdown(grace=0)


BAD_UPLOADS = {
    "no images": (dict(files=[]), 400, "UPLOAD_EMPTY"),
    "unknown option": (dict(colour="blue"), 400, "OPTION_INVALID"),
    "unknown preset": (dict(preset="fast"), 400, "OPTION_INVALID"),
    "steps not a number": (dict(steps="many"), 400, "OPTION_INVALID"),
    "bad category": (dict(category="Mugs!"), 400, "CATEGORY_INVALID"),
    "names for another K": (dict(names="a,b"), 400, "OPTION_INVALID"),
    "too few images (a text file skipped)": (dict(files=PHOTOS[:5] + [("notes.txt", b"hello")]), 400, "TOO_FEW_IMAGES"),
    "only non-images": (dict(files=[("a.txt", b"x"), ("b.jpg", b"not a jpeg")]), 400, "TOO_FEW_IMAGES"),
    "zip entry with ..": (dict(files=[("x.zip", _zip(PHOTOS[:9] + [("../evil.png", PHOTOS[9][1])]))]), 400,
                          "UPLOAD_UNSAFE"),
    "zip entry with an absolute path": (dict(files=[("x.zip", _zip([("/etc/evil.png", PHOTOS[0][1])]))]), 400,
                                        "UPLOAD_UNSAFE"),
    "zip bomb": (dict(files=[("bomb.zip", _zip([("zeros.png", bytes(8 << 20))], zipfile.ZIP_DEFLATED))]), 400,
                 "UPLOAD_UNSAFE"),
    "not a zip": (dict(files=[("photos.zip", b"PK\x03\x04 but nothing else")]), 400, "UPLOAD_UNSAFE"),
    "too many images": (dict(files=[(f"q{i}.png", png_bytes(20, 20, seed=i)) for i in range(13)]), 413,
                        "UPLOAD_TOO_LARGE"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_refused_with_their_code(refusing_server, case):
    kwargs, want_status, want_reason = BAD_UPLOADS[case]
    status, error = submit(refusing_server.http_port, **kwargs)
    assert status == want_status, error
    assert error["details"][0]["reason"] == want_reason, error
    assert error["message"]
    assert not [p for p in (refusing_server.config.adapters_dir / ".jobs").iterdir() if p.is_dir()]
    assert call(refusing_server.http_port, "/v1/adaptations")[1]["jobs"] == []


def test_a_body_over_the_upload_limit_is_413_before_it_is_read(refusing_server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", refusing_server.http_port, timeout=30)
    conn.putrequest("POST", "/v1/adaptations")
    for name, value in {**AUTH, "content-type": "multipart/form-data; boundary=x", "content-length": str(3 << 20)}.items():
        conn.putheader(name, value)
    conn.endheaders()  # no body sent: the answer comes from the length alone
    reply = conn.getresponse()
    error = json.loads(reply.read())
    conn.close()
    assert reply.status == 413 and error["details"][0]["reason"] == "BODY_TOO_LARGE"
    assert "--max-adaptation-upload-mb" in error["message"]


def test_skipped_files_are_counted_in_the_zip_report(refusing_server, monkeypatch):
    # a zip with the photos, a readme and a folder: the job is accepted, the readme counted
    monkeypatch.setenv(HOLD_ENV, "1")  # still running when cancelled
    entries = PHOTOS + [("readme.txt", b"my mugs"), ("sub/", b"")]
    status, job = submit(refusing_server.http_port, files=[("mugs.zip", _zip(entries))], steps="1")
    assert status == 202, job
    assert job["upload"]["images"] == 10 and job["upload"]["skipped"] == {"not_image": 1}
    assert call(refusing_server.http_port, f"/v1/adaptations/{job['id']}", "DELETE")[0] == 200


def test_jobs_need_the_admin_token(refusing_server):
    body, kind = multipart([("category", "mugs")], [("images", n, d) for n, d in PHOTOS])
    req = urllib.request.Request(f"http://127.0.0.1:{refusing_server.http_port}/v1/adaptations", data=body,
                                 method="POST", headers={"content-type": kind})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 401


def test_jobs_off_answer_501(store):
    server = jobs_server(store, adaptation_workers=0)
    try:
        status, error = submit(server.http_port)
        assert status == 501 and error["code"] == "FAILED_PRECONDITION"
        assert error["details"][0]["reason"] == "ADAPTATION_UNAVAILABLE" and "--adaptation-workers 0" in error["message"]
    finally:
        server.shutdown(grace=0)
    server = jobs_server(store, enable_admin=False, admin_token=None)
    try:
        status, error = submit(server.http_port)
        assert status == 501 and error["code"] == "UNIMPLEMENTED" and "--no-admin" in error["message"]
    finally:
        server.shutdown(grace=0)


def test_a_server_without_torch_answers_501_and_still_serves(store, tmp_path):
    """`landmarks serve` in an interpreter where torch cannot be imported (the serving install)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    script = "import sys; sys.modules['torch'] = None; from landmarks.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", "--adapters", str(store), "--port", "0",
                             "--http-port", "0", "--threads", "1", "--admin-token-file", str(token)],
                            cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        found = re.search(r"demo page on http://127\.0\.0\.1:(\d+)/", line)
        assert found, f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        port = int(found.group(1))
        for method, path in (("POST", "/v1/adaptations"), ("GET", "/v1/adaptations"), ("GET", "/v1/adaptations/x")):
            status, error = submit(port) if method == "POST" else call(port, path)
            assert status == 501 and error["code"] == "FAILED_PRECONDITION", error
            assert "pip install 'landmark-adapters[train]'" in error["message"]
        status, detection = call(port, "/v1/detect?category=cats", "POST", photo(3), {"content-type": "image/png"})
        assert status == 200, detection
        assert not (store / ".jobs").exists()  # nothing written for jobs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_cli_submits_a_folder_and_prints_the_version(store, tmp_path):
    """Without torch on the client (the `train` extra): `landmarks adapt` is then its --server part alone."""
    import os
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, data in PHOTOS:
        (photos / name).write_bytes(data)
    (photos / "notes.txt").write_text("not sent")
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    server = jobs_server(store)
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-c", ("import sys; sys.modules['torch'] = None; from landmarks.cli import main; "
             "sys.exit(main(sys.argv[1:]))"),
             "adapt", "--server", f"127.0.0.1:{server.port}", f"folder:{photos}", "--category", "mugs",
             "--preset", "smoke", "--num-landmarks", "3", "--admin-token-file", str(token)],
            cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert "sending 10 files" in done.stderr and "3/3" in done.stderr  # the progress bar's end
        version = done.stdout.strip().splitlines()[-1]
        assert version.startswith("registered mugs/job-") and version.endswith("(active)"), done.stdout
        assert "validation on held-out images: " in done.stdout
        assert "training" in done.stderr
        _, categories = call(server.http_port, "/v1/categories")
        assert "mugs" in [c["name"] for c in categories["categories"]]
    finally:
        server.shutdown(grace=0)


def test_a_job_reads_a_server_folder_only_inside_allow_path(store, tmp_path, monkeypatch):
    allowed = tmp_path / "allowed" / "mugs"
    allowed.mkdir(parents=True)
    for name, data in PHOTOS:
        (allowed / name).write_bytes(data)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (allowed / "sneaky.png").symlink_to(outside / "secret.png")
    (outside / "secret.png").write_bytes(photo(50))
    monkeypatch.setenv(HOLD_ENV, "1")
    server = jobs_server(store, allowed_register_dirs=(tmp_path / "allowed",))
    try:
        status, job = submit(server.http_port, files=[], path=str(allowed))
        assert status == 202, job
        assert job["upload"]["images"] == 10  # the link out of the allowed folder was not followed
        assert "path" not in job["options"]
        assert call(server.http_port, f"/v1/adaptations/{job['id']}", "DELETE")[0] == 200
        for path, want in ((str(outside), (403, "PATH_NOT_ALLOWED")), (str(allowed / "../../elsewhere"),
                                                                      (403, "PATH_NOT_ALLOWED")),
                           (str(tmp_path / "allowed" / "none"), (404, "PATH_NOT_FOUND"))):
            status, error = submit(server.http_port, files=[], path=path)
            assert (status, error["details"][0]["reason"]) == want, error
    finally:
        server.shutdown(grace=0)
    server = jobs_server(store)  # no --allow-path: no server folders
    try:
        status, error = submit(server.http_port, files=[], path=str(allowed))
        assert (status, error["details"][0]["reason"]) == (403, "PATH_REGISTRATION_DISABLED")
    finally:
        server.shutdown(grace=0)


def test_adapt_offers_server_jobs_with_or_without_torch():
    import subprocess
    import sys

    from landmarks.cli import build_parser

    with_torch = build_parser("adapt")._subparsers._group_actions[0].choices["adapt"].format_help()
    assert "--server HOST:PORT" in with_torch and "--generator-channels" in with_torch
    root = Path(__file__).resolve().parents[2]
    script = ("import sys; sys.modules['torch'] = None; from landmarks.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    helped = subprocess.run([sys.executable, "-c", script, "adapt", "--help"], cwd=root, capture_output=True,
                            text=True, check=False)
    assert helped.returncode == 0 and "--server HOST:PORT" in helped.stdout and "--generator-channels" not in helped.stdout
    local = subprocess.run([sys.executable, "-c", script, "adapt", "folder:x", "--category", "mugs"], cwd=root,
                           capture_output=True, text=True, check=False)
    assert local.returncode == 2 and "pip install 'landmark-adapters[train]'" in local.stderr
    assert "--server HOST:PORT" in local.stderr


def test_a_job_on_a_served_category_adds_a_version_and_activates_only_if_asked(store):
    server = jobs_server(store)
    try:
        body, kind = multipart([("category", "cats"), ("preset", "smoke")],  # K: the category's own (4)
                               [("images", name, data) for name, data in PHOTOS])
        status, job = call(server.http_port, "/v1/adaptations", "POST", body, {"content-type": kind})
        assert status == 202 and job["options"]["num_landmarks"] == 4, job
        done = events(server.http_port, job["id"])[-1]
        assert done["state"] == "succeeded" and not done["activated"], done
        cats = {c["name"]: c for c in call(server.http_port, "/v1/categories")[1]["categories"]}["cats"]
        assert cats["active_version"] == "shipped"
        assert {v["version"] for v in cats["versions"]} == {"shipped", done["version"]}
        status, detection = call(server.http_port, "/v1/detect?category=cats", "POST", photo(5),
                                 {"content-type": "image/png"})
        assert status == 200 and detection["version"] == "shipped"
        # another K for a served category is refused before anything is uploaded
        status, error = submit(server.http_port, category="cats", num_landmarks="3")
        assert status == 400 and error["details"][0]["reason"] == "OPTION_INVALID" and "K=4" in error["message"]
    finally:
        server.shutdown(grace=0)


def test_a_job_whose_training_fails_reports_why_and_registers_nothing(store):
    server = jobs_server(store)
    try:
        (store / "core.safetensors").write_bytes(b"not a core any more")  # the server has it in memory already
        status, job = submit(server.http_port)
        assert status == 202
        done = events(server.http_port, job["id"])[-1]
        assert done["state"] == "failed" and done["version"] == "" and "core" in done["error"].lower(), done
        assert "mugs" not in [c["name"] for c in call(server.http_port, "/v1/categories")[1]["categories"]]
        status, error = call(server.http_port, f"/v1/adaptations/{job['id']}", "DELETE")
        assert status == 400 and error["details"][0]["reason"] == "JOB_FINISHED"
    finally:
        server.shutdown(grace=0)
