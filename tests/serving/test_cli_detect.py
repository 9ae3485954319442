"""`landmarks detect` on folders and globs: JSON lines, --draw-dir, a bad image reported on its line,
and --local (no server) giving the server's numbers."""

from __future__ import annotations

import json

import pytest

from landmarks.cli import main
from tests.serving.helpers import jpeg_bytes, png_bytes


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    (d / "more").mkdir(parents=True)
    (d / "a.png").write_bytes(png_bytes(48, 40, seed=1))
    (d / "b.jpg").write_bytes(jpeg_bytes(64, 48, seed=2))
    (d / "notes.txt").write_text("not an image")
    (d / "more" / "a.png").write_bytes(png_bytes(40, 40, seed=3))
    return d


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_folder_gives_json_lines_and_one_picture_per_image(server, photos, tmp_path, capsys):
    target = f"127.0.0.1:{server.port}"
    assert main(["detect", "--server", target, "--category", "cats", str(photos),
                 "--draw-dir", str(tmp_path / "drawn")]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [r["image"] for r in records] == [str(photos / "a.png"), str(photos / "b.jpg")]
    assert all(len(r["landmarks"]) == 4 and r["category"] == "cats" for r in records)
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png"]
    # --recursive: the subfolder's a.png is drawn as a-2.png; a quoted glob is expanded here
    assert main(["detect", "--server", target, "--category", "cats", str(photos), "-r",
                 "--draw-dir", str(tmp_path / "all")]) == 0
    assert len(json_lines(capsys.readouterr().out)) == 3
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["a-2.png", "a.png", "b.png"]
    assert main(["detect", "--server", target, "--category", "cats", str(photos / "**" / "*.png")]) == 0
    assert [r["image"] for r in json_lines(capsys.readouterr().out)] == [str(photos / "a.png"),
                                                                          str(photos / "more" / "a.png")]
    # one file without --jsonl: one pretty JSON object, as before
    assert main(["detect", "--server", target, "--category", "cats", str(photos / "a.png")]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(photos / "a.png")


def test_a_bad_image_gets_its_own_line_and_the_rest_go_on(server, photos, capsys):
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["detect", "--server", f"127.0.0.1:{server.port}", "--category", "cats", str(photos)]) == 1
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert [r["image"].rsplit("/", 1)[1] for r in records] == ["a.png", "b.jpg", "broken.jpg"]
    assert records[2]["error"]["code"] == "INVALID_ARGUMENT" and "landmarks" in records[1]
    assert "1 of 3 images could not be read" in captured.err


def test_nothing_to_read_says_so(photos, capsys):
    assert main(["detect", "--category", "cats", str(photos / "*.gif")]) == 2
    assert "no image matches" in capsys.readouterr().err
    assert main(["detect", "--category", "cats", str(photos / "more" / "nothing.png")]) == 2
    assert "no such image, folder or glob match" in capsys.readouterr().err
    (photos / "empty").mkdir()
    assert main(["detect", "--category", "cats", str(photos / "empty")]) == 2
    assert "holds no" in capsys.readouterr().err


def test_local_gives_the_servers_numbers_without_a_server(server, store, photos, capsys):
    args = ["detect", "--category", "faces", str(photos), "--jsonl"]
    assert main([*args, "--server", f"127.0.0.1:{server.port}"]) == 0
    remote = json_lines(capsys.readouterr().out)
    assert main([*args, "--local", "--adapters", str(store)]) == 0
    local = json_lines(capsys.readouterr().out)
    assert len(local) == len(remote) == 2
    for a, b in zip(local, remote):
        assert a["image"] == b["image"] and a["box"] == b["box"]
        for p, q in zip(a["landmarks"], b["landmarks"]):
            assert p["name"] == q["name"] and abs(p["x"] - q["x"]) < 1e-3 and abs(p["y"] - q["y"]) < 1e-3
    assert main(["detect", "--local", "--adapters", str(store), "--category", "dogs", str(photos)]) == 2
    assert "no adapter for 'dogs'" in capsys.readouterr().err
