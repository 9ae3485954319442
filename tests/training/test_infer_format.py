"""A bare dataset path works where its format is plain from what it holds; otherwise a clear message."""

from __future__ import annotations

import pytest
from PIL import Image

from training.datasets import DatasetError, infer_format, open_dataset


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (120, 60, 30)).save(path)


def test_formats_are_told_from_what_a_path_holds(tmp_path):
    _image(tmp_path / "plain" / "a" / "x.jpg")
    (tmp_path / "w300").mkdir()
    (tmp_path / "w300" / "x.pts").write_text("version: 1\n")
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "x.jpg.cat").write_text("9 1 2")
    (tmp_path / "pose").mkdir()
    (tmp_path / "pose" / "joints.mat").write_bytes(b"")
    (tmp_path / "list.txt").write_text("")
    (tmp_path / "mpii.json").write_text("[]")
    assert [infer_format(str(tmp_path / n)) for n in ("plain", "w300", "cats", "pose", "list.txt", "mpii.json")] \
        == ["folder", "300w", "cats", "lspet", "mtfl", "mpii"]


def test_a_plain_folder_opens_as_unlabelled_images(tmp_path):
    for i in range(3):
        _image(tmp_path / "imgs" / f"{i}.png")
    assert len(open_dataset(str(tmp_path / "imgs"))) == len(open_dataset(f"folder:{tmp_path / 'imgs'}")) == 3


def test_what_cannot_be_told_says_what_to_write(tmp_path):
    (tmp_path / "notes.csv").write_text("")
    with pytest.raises(DatasetError, match="FORMAT:"):
        open_dataset(str(tmp_path / "notes.csv"))
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset(str(tmp_path / "missing"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.pts").write_text("")
    (mixed / "b.cat").write_text("")
    with pytest.raises(DatasetError, match="300w:"):
        open_dataset(str(mixed))
